package wire

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/keyring"
)

func testKey(b byte) keyring.Key {
	return keyring.FromSecret("0000000"+string('0'+b), bytes.Repeat([]byte{b}, 32))
}

func TestRequestSignature(t *testing.T) {
	key := testKey(1)
	now := time.Unix(1_800_000_000, 0)
	v := &Verifier{Ring: keyring.NewRing(key), Now: func() time.Time { return now }}
	q := url.Values{"id": {"abc"}, "i": {"2"}}
	sign := func(nonce string, ts time.Time, n int64) string {
		return SignRequest(key, "PUT", PathUp, q, &Auth{TS: ts.UnixMilli(), Nonce: nonce, Len: n})
	}

	h := sign("nonce-000000000001", now, 100)
	_, a, err := v.Verify(h, "PUT", PathUp, q, 100)
	require.NoError(t, err)
	require.Equal(t, int64(100), a.Len)

	// A replay of the same request is refused.
	_, _, err = v.Verify(h, "PUT", PathUp, q, 100)
	require.ErrorIs(t, err, ErrUnauthenticated)

	// Every covered part matters: method, logical path, query, length.
	h = sign("nonce-000000000002", now, 100)
	for _, tc := range []struct {
		name, method, path string
		q                  url.Values
		n                  int64
	}{
		{"method", "POST", PathUp, q, 100},
		{"path", "PUT", PathDown, q, 100},
		{"query", "PUT", PathUp, url.Values{"id": {"abc"}, "i": {"3"}}, 100},
		{"length", "PUT", PathUp, q, 101},
	} {
		_, _, err := v.Verify(h, tc.method, tc.path, tc.q, tc.n)
		require.ErrorIs(t, err, ErrUnauthenticated, tc.name)
	}

	// Outside the time window, either way.
	for _, d := range []time.Duration{-Window - time.Second, Window + time.Second} {
		_, _, err = v.Verify(sign("nonce-00000000000w", now.Add(d), 0), "PUT", PathUp, q, 0)
		require.ErrorIs(t, err, ErrUnauthenticated)
	}

	// Signed before the server started, or in the second it started:
	// stale, even inside the window.
	v.Start = now.Add(-10 * time.Second)
	_, _, err = v.Verify(sign("nonce-00000000000s", now.Add(-11*time.Second), 0), "PUT", PathUp, q, 0)
	require.ErrorIs(t, err, ErrStale)
	_, _, err = v.Verify(sign("nonce-0000000000s2", now.Add(-10*time.Second-time.Millisecond), 0), "PUT", PathUp, q, 0)
	require.ErrorIs(t, err, ErrStale)

	// Another key with the same id, or an unknown id.
	other := testKey(2)
	other2 := keyring.FromSecret(key.ID, bytes.Repeat([]byte{9}, 32))
	for _, k := range []keyring.Key{other, other2} {
		h := SignRequest(k, "GET", PathStatus, nil, &Auth{TS: now.UnixMilli(), Nonce: "nonce-00000000000k"})
		_, _, err := v.Verify(h, "GET", PathStatus, nil, 0)
		require.ErrorIs(t, err, ErrUnauthenticated)
	}
	for _, bad := range []string{"", "Bearer x", scheme + " kid=1", scheme + " kid=00000001,ts=x,nonce=nonce-000000000009,len=0,sig=00"} {
		_, _, err := v.Verify(bad, "GET", PathStatus, nil, 0)
		require.ErrorIs(t, err, ErrUnauthenticated)
	}
}

func TestSealedBodiesAreBoundToTheirRequest(t *testing.T) {
	key := testKey(1)
	a := Auth{KeyID: key.ID, TS: 1000, Nonce: "nonce-000000000001"}
	plain, err := frame(Open{V: Version, Repo: "acme/widgets"}, []byte("inline"))
	require.NoError(t, err)
	a.Len = SealedLen(len(plain))
	body, err := sealRequest(key, a, "POST", PathOpen, nil, plain)
	require.NoError(t, err)
	require.EqualValues(t, a.Len, len(body))
	require.NotContains(t, string(body), "acme")

	var o Open
	js, tail, err := OpenRequest(key, a, "POST", PathOpen, nil, body)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(js, &o))
	require.Equal(t, "acme/widgets", o.Repo)
	require.Equal(t, "inline", string(tail))

	// The same body under another request, path, or with a flipped byte
	// does not open.
	b := a
	b.Nonce = "nonce-000000000002"
	_, _, err = OpenRequest(key, b, "POST", PathOpen, nil, body)
	require.ErrorIs(t, err, ErrSealed)
	_, _, err = OpenRequest(key, a, "POST", PathCancel, nil, body)
	require.ErrorIs(t, err, ErrSealed)
	flipped := append([]byte(nil), body...)
	flipped[20] ^= 1
	_, _, err = OpenRequest(key, a, "POST", PathOpen, nil, flipped)
	require.ErrorIs(t, err, ErrSealed)

	// An answer sealed as 200 does not open as 404, nor for another nonce.
	ans, err := SealAnswer(key, a.Nonce, 200, Status{Phase: PhaseDone}, nil)
	require.NoError(t, err)
	var st Status
	_, err = openAnswer(key, a.Nonce, 200, ans, &st)
	require.NoError(t, err)
	require.Equal(t, PhaseDone, st.Phase)
	_, err = openAnswer(key, a.Nonce, 404, ans, &st)
	require.ErrorIs(t, err, ErrSealed)
	_, err = openAnswer(key, b.Nonce, 200, ans, &st)
	require.ErrorIs(t, err, ErrSealed)
}

// server answers like the relay: verifies, opens, and seals.
func server(t *testing.T, key keyring.Key, handle func(w http.ResponseWriter, a Auth, o Open) (int, any)) *httptest.Server {
	v := &Verifier{Ring: keyring.NewRing(key)}
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		path := strings.TrimPrefix(r.URL.Path, "/api/gr/")
		_, a, err := v.Verify(r.Header.Get(HeaderAuth), r.Method, path, r.URL.Query(), r.ContentLength)
		if err != nil {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		body, _ := io.ReadAll(r.Body)
		var o Open
		if len(body) > 0 {
			js, _, err := OpenRequest(key, a, r.Method, path, r.URL.Query(), body)
			require.NoError(t, err)
			require.NoError(t, json.Unmarshal(js, &o))
		}
		status, msg := handle(w, a, o)
		if status == 0 {
			return
		}
		ans, err := SealAnswer(key, a.Nonce, status, msg, nil)
		require.NoError(t, err)
		w.Header().Set(HeaderSignature, SignResponse(key, a.Nonce, status, int64(len(ans))))
		w.WriteHeader(status)
		w.Write(ans)
	}))
	t.Cleanup(s.Close)
	return s
}

func TestClientRetriesSpoiledAnswersAndReportsErrors(t *testing.T) {
	key := testKey(3)
	var calls atomic.Int32
	s := server(t, key, func(w http.ResponseWriter, a Auth, o Open) (int, any) {
		switch calls.Add(1) {
		case 1:
			// A proxy spoiled the answer: a bad signature.
			w.Header().Set(HeaderSignature, "00")
			w.WriteHeader(200)
			return 0, nil
		case 2:
			w.WriteHeader(http.StatusBadGateway)
			return 0, nil
		case 3:
			return 200, Status{ID: o.ID, Phase: PhaseDone}
		}
		return http.StatusConflict, Error{Code: CodeConflict, Message: "chunk 3 already holds different bytes"}
	})
	c := &Client{Base: s.URL + "/api/gr", Key: key, Retries: 4}
	var st Status
	_, err := c.Call(t.Context(), Request{Method: "POST", Path: PathOpen, Msg: Open{ID: "x"}}, &st)
	require.NoError(t, err)
	require.Equal(t, PhaseDone, st.Phase)
	require.EqualValues(t, 3, calls.Load())

	_, err = c.Call(t.Context(), Request{Method: "POST", Path: PathOpen, Msg: Open{ID: "x"}}, &st)
	var api *APIError
	require.ErrorAs(t, err, &api)
	require.Equal(t, CodeConflict, api.Code)

	// The wrong key: one clear error, no retries.
	calls.Store(0)
	wrong := &Client{Base: s.URL + "/api/gr", Key: testKey(4), Retries: 4}
	_, err = wrong.Call(t.Context(), Request{Method: "GET", Path: PathStatus}, nil)
	require.ErrorIs(t, err, ErrKeyRefused)
	require.EqualValues(t, 0, calls.Load())
}

func TestClientNoticesAStall(t *testing.T) {
	key := testKey(5)
	release := make(chan struct{})
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release // frozen: never answers, never closes
	}))
	defer s.Close()
	defer close(release) // before Close, which waits for the handler
	var warned atomic.Value
	c := &Client{Base: s.URL, Key: key, Retries: 4, Stall: 800 * time.Millisecond,
		Waiting: func(what string, d time.Duration) { warned.Store(what) }}
	start := time.Now()
	_, err := c.Call(context.Background(), Request{Method: "GET", Path: PathStatus, What: "the push's outcome"}, nil)
	require.ErrorIs(t, err, ErrStalled)
	require.Contains(t, err.Error(), "the push's outcome")
	require.Less(t, time.Since(start), 10*time.Second, "a stall is not retried")
	require.Equal(t, "the push's outcome", warned.Load())
}

func TestMessagesDecode(t *testing.T) {
	var r RefResult
	require.NoError(t, json.Unmarshal([]byte(`{"ref":"refs/heads/x","reason":"fetch first"}`), &r))
	require.Equal(t, ReasonFetchFirst, r.Reason)
	require.True(t, errors.Is(ErrStale, ErrUnauthenticated))
}
