package wire

import (
	"bytes"
	"net/url"
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
	q := url.Values{"session": {"abc"}, "index": {"2"}}
	body := []byte("sealed chunk")
	sign := func(nonce string) string { return SignRequest(key, "PUT", PathPushChunk, q, body, now.Unix(), nonce) }

	h := sign("n1")
	_, _, err := v.Verify(h, "PUT", PathPushChunk, q, body)
	require.NoError(t, err)

	// A replay of the same request is refused.
	_, _, err = v.Verify(h, "PUT", PathPushChunk, q, body)
	require.ErrorIs(t, err, ErrUnauthenticated)

	// Every covered part matters: method, logical path, query, body.
	h = sign("n2")
	for _, tc := range []struct {
		name, method, path string
		q                  url.Values
		body               []byte
	}{
		{"method", "POST", PathPushChunk, q, body},
		{"path", "PUT", PathPushFinish, q, body},
		{"query", "PUT", PathPushChunk, url.Values{"session": {"abc"}, "index": {"3"}}, body},
		{"body", "PUT", PathPushChunk, q, []byte("sealed chunK")},
	} {
		_, _, err := v.Verify(h, tc.method, tc.path, tc.q, tc.body)
		require.ErrorIs(t, err, ErrUnauthenticated, tc.name)
	}

	// Query order does not matter (it is signed sorted).
	h = SignRequest(key, "GET", PathRefs, url.Values{"b": {"2"}, "a": {"1"}}, nil, now.Unix(), "n3")
	_, _, err = v.Verify(h, "GET", PathRefs, url.Values{"a": {"1"}, "b": {"2"}}, nil)
	require.NoError(t, err)

	// Outside the time window.
	old := SignRequest(key, "GET", PathRefs, nil, nil, now.Add(-Window-time.Second).Unix(), "n4")
	_, _, err = v.Verify(old, "GET", PathRefs, nil, nil)
	require.ErrorIs(t, err, ErrUnauthenticated)

	// Another key with the same id, or an unknown id.
	wrong := keyring.FromSecret(key.ID, bytes.Repeat([]byte{2}, 32))
	_, _, err = v.Verify(SignRequest(wrong, "GET", PathRefs, nil, nil, now.Unix(), "n5"), "GET", PathRefs, nil, nil)
	require.ErrorIs(t, err, ErrUnauthenticated)
	_, _, err = v.Verify(SignRequest(testKey(3), "GET", PathRefs, nil, nil, now.Unix(), "n6"), "GET", PathRefs, nil, nil)
	require.ErrorIs(t, err, ErrUnauthenticated)

	// Garbage headers.
	for _, bad := range []string{"", "Basic abc", scheme + " kid=x", scheme + " kid=1,ts=zz,nonce=a,sig=b"} {
		_, _, err := v.Verify(bad, "GET", PathRefs, nil, nil)
		require.ErrorIs(t, err, ErrUnauthenticated, bad)
	}
}

func TestRotationAcceptsEveryKeyInTheRing(t *testing.T) {
	a, b := testKey(1), testKey(2)
	now := time.Now()
	v := &Verifier{Ring: keyring.NewRing(a, b)}
	for i, k := range []keyring.Key{a, b} {
		h := SignRequest(k, "GET", PathRefs, nil, nil, now.Unix(), "n"+string(rune('0'+i)))
		got, _, err := v.Verify(h, "GET", PathRefs, nil, nil)
		require.NoError(t, err)
		require.Equal(t, k.ID, got.ID)
	}
}

func TestResponseSignatureBindsNonceStatusAndBody(t *testing.T) {
	key := testKey(1)
	sig := SignResponse(key, "nonce", 200, []byte(`{"ok":true}`))
	require.True(t, VerifyResponse(key, "nonce", 200, []byte(`{"ok":true}`), sig))
	require.False(t, VerifyResponse(key, "other", 200, []byte(`{"ok":true}`), sig), "answer to another request")
	require.False(t, VerifyResponse(key, "nonce", 409, []byte(`{"ok":true}`), sig), "status changed")
	require.False(t, VerifyResponse(key, "nonce", 200, []byte(`{"ok":false}`), sig), "body changed")
	require.False(t, VerifyResponse(testKey(2), "nonce", 200, []byte(`{"ok":true}`), sig), "other key")
}
