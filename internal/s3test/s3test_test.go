package s3test_test

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/s3test"
)

// TestCIInstallsVersion: .ci/run installs the version the tests name.
func TestCIInstallsVersion(t *testing.T) {
	run, err := os.ReadFile(filepath.Join("..", "..", ".ci", "run"))
	require.NoError(t, err)
	m := regexp.MustCompile(`(?m)^versitygw_version=(\S+)$`).FindSubmatch(run)
	require.NotNil(t, m, ".ci/run sets versitygw_version")
	require.Equal(t, s3test.Version, string(m[1]))
}

func TestBinaryMissing(t *testing.T) {
	empty := t.TempDir()
	t.Setenv("PATH", empty)
	t.Setenv("GOBIN", empty)
	t.Setenv("GOPATH", empty)
	_, err := s3test.Binary()
	require.EqualError(t, err, "versitygw not found on PATH, in $GOBIN or in $GOPATH/bin: run `go install github.com/versity/versitygw/cmd/versitygw@"+s3test.Version+"`")

	// `go install` puts it in $GOPATH/bin when GOBIN is unset.
	gopath := t.TempDir()
	require.NoError(t, os.Mkdir(filepath.Join(gopath, "bin"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(gopath, "bin", "versitygw"), []byte("#!/bin/sh\n"), 0o755))
	t.Setenv("GOBIN", "")
	t.Setenv("GOPATH", gopath)
	got, err := s3test.Binary()
	require.NoError(t, err)
	require.Equal(t, filepath.Join(gopath, "bin", "versitygw"), got)
}

func TestStart(t *testing.T) {
	srv := s3test.Start(t)
	require.Regexp(t, `^http://127\.0\.0\.1:\d+$`, srv.Endpoint)
	require.Equal(t, []string{
		"AWS_ENDPOINT_URL=" + srv.Endpoint,
		"AWS_REGION=us-east-1",
		"AWS_ACCESS_KEY_ID=" + srv.AccessKeyID,
		"AWS_SECRET_ACCESS_KEY=" + srv.SecretAccessKey,
	}, srv.Env())
	require.Equal(t, "s3://"+srv.Bucket+"/p", srv.URL("p"))

	// The bucket exists and is empty; what a client writes lands in the
	// server's folder (the posix backend keeps objects as files).
	c := srv.Client()
	list, err := c.ListObjectsV2(t.Context(), &s3.ListObjectsV2Input{Bucket: &srv.Bucket})
	require.NoError(t, err)
	require.Empty(t, list.Contents)
	_, err = c.PutObject(t.Context(), &s3.PutObjectInput{Bucket: &srv.Bucket, Key: aws.String("a/b"), Body: strings.NewReader("hello")})
	require.NoError(t, err)
	got, err := os.ReadFile(filepath.Join(srv.Dir, srv.Bucket, "a", "b"))
	require.NoError(t, err)
	require.Equal(t, "hello", string(got))

	// Conditional writes are enforced: the property the store relies on.
	_, err = c.PutObject(t.Context(), &s3.PutObjectInput{Bucket: &srv.Bucket, Key: aws.String("a/b"), Body: strings.NewReader("again"), IfNoneMatch: aws.String("*")})
	require.Equal(t, http.StatusPreconditionFailed, status(err))
	_, err = c.PutObject(t.Context(), &s3.PutObjectInput{Bucket: &srv.Bucket, Key: aws.String("a/b"), Body: strings.NewReader("again"), IfMatch: aws.String(`"0123"`)})
	require.Equal(t, http.StatusPreconditionFailed, status(err))

	// Two servers at once get their own ports and folders.
	other := s3test.Start(t)
	require.NotEqual(t, srv.Endpoint, other.Endpoint)
	require.NotEqual(t, srv.Dir, other.Dir)
}

// TestStop: the server is gone when the test that started it ends.
func TestStop(t *testing.T) {
	var srv *s3test.Server
	t.Run("inner", func(t *testing.T) { srv = s3test.Start(t) })
	if srv == nil {
		t.Skip("no server was started")
	}
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(srv.Endpoint + "/health")
	if err == nil {
		resp.Body.Close()
	}
	require.Error(t, err, "versitygw still answers after its test ended")
}

func status(err error) int {
	var withStatus interface{ HTTPStatusCode() int }
	if errors.As(err, &withStatus) {
		return withStatus.HTTPStatusCode()
	}
	return 0
}
