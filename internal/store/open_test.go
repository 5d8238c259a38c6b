package store_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/s3test"
	"github.com/git-relay/git-relay/internal/store"
)

func TestOpenFolder(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "relay-data", "sessions")
	s, err := store.Open(t.Context(), dir)
	require.NoError(t, err)
	require.IsType(t, &store.Local{}, s)
	require.Equal(t, dir, s.(*store.Local).Dir())
	_, err = s.Put(t.Context(), "k", []byte("v"), store.PutOptions{})
	require.NoError(t, err)
	_, err = os.Stat(filepath.Join(dir, "k"))
	require.NoError(t, err)

	// A relative path is the folder under the working directory.
	t.Chdir(t.TempDir())
	s, err = store.Open(t.Context(), "data")
	require.NoError(t, err)
	wd, err := os.Getwd()
	require.NoError(t, err)
	require.Equal(t, filepath.Join(wd, "data"), s.(*store.Local).Dir())
}

func TestOpenErrors(t *testing.T) {
	for _, tc := range []struct{ location, want string }{
		{"", "store location is empty: pass a folder path or s3://BUCKET/PREFIX"},
		{"gs://bucket/x", `store "gs://bucket/x": unsupported scheme: use a folder path or s3://BUCKET/PREFIX`},
		{"S3://bucket/x", `unsupported scheme`},
		{"s3://", `bucket "" is not a valid S3 bucket name`},
		{"s3:///relay", `bucket "" is not a valid S3 bucket name`},
		{"s3://Relay_Bucket/x", `bucket "Relay_Bucket" is not a valid S3 bucket name`},
		{"s3://bucket:9000/x", "only a bucket and a prefix are allowed: use s3://BUCKET/PREFIX and AWS_ENDPOINT_URL for the server"},
		{"s3://key:secret@bucket/x", "only a bucket and a prefix are allowed"},
		{"s3://bucket/x?region=eu", "only a bucket and a prefix are allowed"},
		{"s3://bucket/../x", `prefix "../x": segments of [A-Za-z0-9._-], not starting with a dot`},
		{"s3://bucket/a//b", `prefix "a//b"`},
	} {
		_, err := store.Open(t.Context(), tc.location)
		require.ErrorContains(t, err, tc.want, "Open(%q)", tc.location)
		require.NotContains(t, err.Error(), "\n", "Open(%q): a user-facing error is one line", tc.location)
	}
}

func TestS3ConfigFromEnv(t *testing.T) {
	env := func(kv ...string) func(string) string {
		m := map[string]string{}
		for _, s := range kv {
			k, v, _ := strings.Cut(s, "=")
			m[k] = v
		}
		return func(k string) string { return m[k] }
	}
	full := []string{"AWS_REGION=eu-west-3", "AWS_ACCESS_KEY_ID=AK", "AWS_SECRET_ACCESS_KEY=SK"}

	cfg, err := store.S3ConfigFromEnv("s3://relay-bucket/prod/sessions", env(full...))
	require.NoError(t, err)
	require.Equal(t, store.S3Config{
		Bucket: "relay-bucket", Prefix: "prod/sessions/",
		Region: "eu-west-3", AccessKeyID: "AK", SecretAccessKey: "SK",
	}, cfg)

	cfg, err = store.S3ConfigFromEnv("s3://relay-bucket", env(full...))
	require.NoError(t, err)
	require.Empty(t, cfg.Prefix)
	cfg, err = store.S3ConfigFromEnv("s3://relay-bucket/", env(full...))
	require.NoError(t, err)
	require.Empty(t, cfg.Prefix)
	cfg, err = store.S3ConfigFromEnv("s3://relay-bucket/p/", env(full...))
	require.NoError(t, err)
	require.Equal(t, "p/", cfg.Prefix)

	// AWS_DEFAULT_REGION stands in for AWS_REGION; the S3-specific
	// endpoint wins over the general one; a session token is passed on.
	cfg, err = store.S3ConfigFromEnv("s3://b1b/p", env("AWS_DEFAULT_REGION=us-west-2", "AWS_ACCESS_KEY_ID=AK",
		"AWS_SECRET_ACCESS_KEY=SK", "AWS_SESSION_TOKEN=TOK",
		"AWS_ENDPOINT_URL=http://general:1", "AWS_ENDPOINT_URL_S3=http://127.0.0.1:7070"))
	require.NoError(t, err)
	require.Equal(t, "us-west-2", cfg.Region)
	require.Equal(t, "TOK", cfg.SessionToken)
	require.Equal(t, "http://127.0.0.1:7070", cfg.Endpoint)

	_, err = store.S3ConfigFromEnv("s3://b1b/p", env())
	require.EqualError(t, err, `store "s3://b1b/p": set AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for an S3-compatible server)`)
	_, err = store.S3ConfigFromEnv("s3://b1b/p", env("AWS_REGION=x", "AWS_ACCESS_KEY_ID=AK"))
	require.EqualError(t, err, `store "s3://b1b/p": set AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for an S3-compatible server)`)
	_, err = store.S3ConfigFromEnv("s3://b1b/p", env(append(full, "AWS_ENDPOINT_URL=127.0.0.1:7070")...))
	require.EqualError(t, err, `store "s3://b1b/p": AWS_ENDPOINT_URL "127.0.0.1:7070" is not an http(s) URL: set it like http://127.0.0.1:7070`)
}

func TestOpenS3(t *testing.T) {
	srv := s3test.Start(t)
	srv.Setenv(t)
	ctx := t.Context()

	s, err := store.Open(ctx, srv.URL("relay/sessions"))
	require.NoError(t, err)
	require.IsType(t, &store.S3{}, s)
	etag, err := s.Put(ctx, "k", []byte("v"), store.PutOptions{IfNoneMatch: true})
	require.NoError(t, err)
	// A second instance on the same location sees the object and loses
	// the same create.
	s2, err := store.Open(ctx, srv.URL("relay/sessions/"))
	require.NoError(t, err)
	got, etag2, err := s2.Get(ctx, "k", nil)
	require.NoError(t, err)
	require.Equal(t, "v", string(got))
	require.Equal(t, etag, etag2)
	_, err = s2.Put(ctx, "k", []byte("w"), store.PutOptions{IfNoneMatch: true})
	require.ErrorIs(t, err, store.ErrPrecondition)

	_, err = store.Open(ctx, "s3://no-such-bucket/x")
	require.ErrorContains(t, err, `bucket "no-such-bucket" does not exist: create it first`)
	require.NotContains(t, err.Error(), "\n")

	t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong")
	_, err = store.Open(ctx, srv.URL("relay"))
	require.ErrorContains(t, err, "access denied (HTTP 403): check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
	require.NotContains(t, err.Error(), "\n")

	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	_, err = store.Open(ctx, srv.URL("relay"))
	require.ErrorContains(t, err, "set AWS_SECRET_ACCESS_KEY")
}
