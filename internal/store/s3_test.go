package store_test

import (
	"crypto/rand"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/s3test"
	"github.com/git-relay/git-relay/internal/store"
	"github.com/git-relay/git-relay/internal/store/storetest"
)

func randomPrefix() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "t-" + hex.EncodeToString(b[:]) + "/"
}

// newS3 opens a store in a fresh prefix of srv's bucket, so that every
// subtest starts empty without starting a server of its own.
func newS3(tb testing.TB, srv *s3test.Server, prefix, endpoint string) *store.S3 {
	tb.Helper()
	s, err := store.NewS3(tb.Context(), store.S3Config{
		Bucket:          srv.Bucket,
		Prefix:          prefix,
		Endpoint:        endpoint,
		Region:          srv.Region,
		AccessKeyID:     srv.AccessKeyID,
		SecretAccessKey: srv.SecretAccessKey,
	})
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func TestS3Conformance(t *testing.T) {
	srv := s3test.Start(t)
	// versitygw's posix backend reads an object's ETag before it opens
	// the file, so a GET racing a PUT can return the new bytes with the
	// old ETag (seen in about one run of AtomicReplace in four). That is
	// safe for compare-and-swap; see storetest.Options.
	opt := storetest.Options{StaleETagUnderRace: true}
	storetest.RunWith(t, func(tb testing.TB) store.Store { return newS3(tb, srv, randomPrefix(), srv.Endpoint) }, opt)
}

// TestS3Layout: what an operator finds in the bucket, read behind the
// store's back.
func TestS3Layout(t *testing.T) {
	srv := s3test.Start(t)
	s := newS3(t, srv, "relay/", srv.Endpoint)
	etag, err := s.Put(t.Context(), "push/1f2e/state", []byte(`{"phase":"upload"}`), store.PutOptions{})
	require.NoError(t, err)

	client := srv.Client()
	out, err := client.GetObject(t.Context(), &s3.GetObjectInput{Bucket: &srv.Bucket, Key: aws.String("relay/push/1f2e/state!")})
	require.NoError(t, err)
	raw, err := io.ReadAll(out.Body)
	out.Body.Close()
	require.NoError(t, err)
	require.Regexp(t, `^grobj1 [0-9a-f]{24}\n\{"phase":"upload"\}$`, string(raw))
	require.Equal(t, `"`+string(etag)+`"`, aws.ToString(out.ETag), "the store's ETag is S3's")

	// Objects the store did not write are not listed: no mark, or no
	// header. Reading one with the mark says what is wrong.
	for key, body := range map[string]string{
		"relay/notes.txt":   "hello",
		"relay/short!":      "x",
		"relay/headless!":   strings.Repeat("no header here ", 4),
		"other/push/1f2e!!": "outside the prefix",
	} {
		_, err := client.PutObject(t.Context(), &s3.PutObjectInput{Bucket: &srv.Bucket, Key: aws.String(key), Body: strings.NewReader(body)})
		require.NoError(t, err)
	}
	var listed []string
	require.NoError(t, s.List(t.Context(), "", func(i store.Info) error {
		listed = append(listed, i.Key)
		return nil
	}))
	require.Equal(t, []string{"headless", "push/1f2e/state"}, listed, "a headless object of header size or more cannot be told from ours by List")
	_, _, err = s.Get(t.Context(), "headless", nil)
	require.ErrorContains(t, err, "not an object of this store")
	_, _, err = s.Get(t.Context(), "short", nil)
	require.ErrorContains(t, err, "not an object of this store")
}

// TestS3LostAnswer: a conditional write that reached the server but whose
// answer was lost (a gateway's 502) is retried by the SDK; the retry fails
// its condition against our own object, and Put still reports success
// with the right ETag, because the object carries our nonce.
func TestS3LostAnswer(t *testing.T) {
	srv := s3test.Start(t)
	backend, err := url.Parse(srv.Endpoint)
	require.NoError(t, err)
	var lose atomic.Bool
	var lost atomic.Int32
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		out := r.Clone(r.Context())
		out.URL.Scheme, out.URL.Host, out.RequestURI = backend.Scheme, backend.Host, ""
		resp, err := http.DefaultTransport.RoundTrip(out)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		conditional := r.Header.Get("If-None-Match") != "" || r.Header.Get("If-Match") != ""
		if r.Method == http.MethodPut && conditional && resp.StatusCode == http.StatusOK && lose.CompareAndSwap(true, false) {
			lost.Add(1)
			http.Error(w, "upstream answer lost", http.StatusBadGateway)
			return
		}
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	}))
	t.Cleanup(proxy.Close)
	s := newS3(t, srv, randomPrefix(), proxy.URL)
	ctx := t.Context()

	lose.Store(true)
	e1, err := s.Put(ctx, "session/manifest", []byte("create once"), store.PutOptions{IfNoneMatch: true})
	require.NoError(t, err, "a create whose answer was lost")
	require.EqualValues(t, 1, lost.Load())
	got, etag, err := s.Get(ctx, "session/manifest", nil)
	require.NoError(t, err)
	require.Equal(t, "create once", string(got))
	require.Equal(t, e1, etag)

	lose.Store(true)
	e2, err := s.Put(ctx, "session/manifest", []byte("swapped"), store.PutOptions{IfMatch: e1})
	require.NoError(t, err, "a compare-and-swap whose answer was lost")
	require.EqualValues(t, 2, lost.Load())
	_, etag, err = s.Get(ctx, "session/manifest", nil)
	require.NoError(t, err)
	require.Equal(t, e2, etag)

	// A real loss is still a loss.
	_, err = s.Put(ctx, "session/manifest", []byte("stale"), store.PutOptions{IfMatch: e1})
	require.ErrorIs(t, err, store.ErrPrecondition)
}
