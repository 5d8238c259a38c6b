// Package wire owns the relay's HTTP protocol: the messages, how every
// request and response is authenticated and sealed, and the client that
// speaks it.
//
// A stateless proxy sits between the helper and the server and may read,
// replay, reorder, drop or alter anything; it does not hold the shared
// key. So:
//
//   - Every request carries, in its Authorization header, an HMAC-SHA256
//     over its method, logical path (the path below the API base: the
//     proxy rewrites the prefix and the Host), sorted query, key id,
//     timestamp, nonce and body length. The server checks it from the
//     headers alone, before it reads a byte of the body, so a request
//     without the key costs it nothing but the headers.
//   - Every body is sealed with AES-256-GCM: a message body (the JSON
//     that names repositories, refs, ids, options and errors) with a key
//     derived from the shared key and the request's nonce, and bound to
//     the request's signed fields (or, for an answer, to its status); a
//     payload chunk with its payload's STREAM key (package seal). So the
//     body's integrity comes with its confidentiality, and no extra hash
//     pass over megabyte bodies is needed: the signature covers the
//     length, the AEAD tag covers the bytes.
//   - Every response is signed too, over the request's nonce, the status
//     and the body length, so a proxy cannot turn a failure into "200 OK"
//     or hand one request's answer to another.
//   - The server refuses a nonce it has seen, a time outside ±Window, and
//     a time from before it started (its nonce cache starts empty); every
//     request that changes state is idempotent besides, so a replay that
//     gets through anyway changes nothing.
//
// The proxy sees routes, opaque exchange ids, chunk numbers and sizes,
// and nothing else.
package wire

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/git-relay/git-relay/internal/keyring"
)

// Header names.
const (
	HeaderAuth      = "Authorization"
	HeaderSignature = "X-Relay-Signature"
	scheme          = "GR3-HMAC-SHA256"
)

// Window is how far a request's clock may be from the server's.
const Window = 300 * time.Second

// NewNonce returns 16 random bytes in hex.
func NewNonce() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// Auth is the signed part of a request.
type Auth struct {
	KeyID string
	TS    int64 // Unix time in milliseconds
	Nonce string
	Len   int64 // body length
	Sig   string
}

// canonical is what a request's signature covers; it is also the
// associated data of its sealed body.
func (a Auth) canonical(method, path string, query url.Values) string {
	return strings.Join([]string{
		scheme, method, path, query.Encode(), a.KeyID,
		strconv.FormatInt(a.TS, 10), a.Nonce, strconv.FormatInt(a.Len, 10),
	}, "\n")
}

func mac(key []byte, msg string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return hex.EncodeToString(m.Sum(nil))
}

// SignRequest fills a.Sig and returns the Authorization header value.
func SignRequest(key keyring.Key, method, path string, query url.Values, a *Auth) string {
	a.KeyID = key.ID
	a.Sig = mac(key.Derive(keyring.LabelRequestMAC, nil, nil), a.canonical(method, path, query))
	return fmt.Sprintf("%s kid=%s,ts=%d,nonce=%s,len=%d,sig=%s", scheme, a.KeyID, a.TS, a.Nonce, a.Len, a.Sig)
}

func responseCanonical(nonce string, status int, length int64) string {
	return strings.Join([]string{scheme + "-RESPONSE", nonce, strconv.Itoa(status), strconv.FormatInt(length, 10)}, "\n")
}

// SignResponse returns the X-Relay-Signature value of an answer to the
// request that carried nonce.
func SignResponse(key keyring.Key, nonce string, status int, length int64) string {
	return mac(key.Derive(keyring.LabelResponseMAC, nil, nil), responseCanonical(nonce, status, length))
}

// VerifyResponse checks an answer's signature.
func VerifyResponse(key keyring.Key, nonce string, status int, length int64, sig string) bool {
	return hmac.Equal([]byte(SignResponse(key, nonce, status, length)), []byte(sig))
}

// ErrUnauthenticated covers every reason a request is refused; the server
// answers them all alike so that a caller without the key learns nothing.
var ErrUnauthenticated = errors.New("request not authenticated")

// ErrStale is a request signed before the server started: its nonce cache
// cannot vouch for it. The client signs it again.
var ErrStale = fmt.Errorf("%w: signed before the server started", ErrUnauthenticated)

// ParseAuth reads an Authorization header.
func ParseAuth(h string) (Auth, error) {
	rest, ok := strings.CutPrefix(h, scheme+" ")
	if !ok || len(h) > 512 {
		return Auth{}, ErrUnauthenticated
	}
	var a Auth
	a.Len = -1
	for _, kv := range strings.Split(rest, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(kv), "=")
		switch k {
		case "kid":
			a.KeyID = v
		case "ts":
			ts, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return Auth{}, ErrUnauthenticated
			}
			a.TS = ts
		case "nonce":
			a.Nonce = v
		case "len":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				return Auth{}, ErrUnauthenticated
			}
			a.Len = n
		case "sig":
			a.Sig = v
		}
	}
	if a.KeyID == "" || len(a.KeyID) > 16 || len(a.Nonce) < 16 || len(a.Nonce) > 64 || a.Sig == "" || a.Len < 0 {
		return Auth{}, ErrUnauthenticated
	}
	return a, nil
}

// Verifier checks request signatures and remembers nonces.
type Verifier struct {
	Ring *keyring.Ring
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// Start is when the server started: a request signed earlier is
	// refused, because the nonce cache, which starts empty, cannot tell a
	// replay of it.
	Start time.Time

	mu     sync.Mutex
	nonces map[string]int64 // nonce -> expiry (Unix milliseconds)
}

// maxNonces bounds the replay cache; past it, expired entries are dropped
// and, if that is not enough, new requests are refused until some expire.
const maxNonces = 1 << 20

// Verify authenticates a request from its headers: contentLength is the
// body's declared length, which the signature must cover. It returns the
// key that signed it.
func (v *Verifier) Verify(header, method, path string, query url.Values, contentLength int64) (keyring.Key, Auth, error) {
	a, err := ParseAuth(header)
	if err != nil {
		return keyring.Key{}, Auth{}, err
	}
	key, ok := v.Ring.Lookup(a.KeyID)
	if !ok || a.Len != contentLength {
		return keyring.Key{}, a, ErrUnauthenticated
	}
	now := time.Now
	if v.Now != nil {
		now = v.Now
	}
	t := now().UnixMilli()
	if d := t - a.TS; d > Window.Milliseconds() || d < -Window.Milliseconds() {
		return keyring.Key{}, a, ErrUnauthenticated
	}
	want := mac(key.Derive(keyring.LabelRequestMAC, nil, nil), a.canonical(method, path, query))
	if !hmac.Equal([]byte(want), []byte(a.Sig)) {
		return keyring.Key{}, a, ErrUnauthenticated
	}
	if !v.Start.IsZero() && a.TS < v.Start.UnixMilli() {
		return keyring.Key{}, a, ErrStale
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.nonces == nil {
		v.nonces = map[string]int64{}
	}
	if exp, seen := v.nonces[a.Nonce]; seen && exp >= t {
		return keyring.Key{}, a, fmt.Errorf("%w: replayed nonce", ErrUnauthenticated)
	}
	if len(v.nonces) >= maxNonces {
		for n, exp := range v.nonces {
			if exp < t {
				delete(v.nonces, n)
			}
		}
		if len(v.nonces) >= maxNonces {
			return keyring.Key{}, a, fmt.Errorf("%w: too many requests in the window", ErrUnauthenticated)
		}
	}
	v.nonces[a.Nonce] = t + 2*Window.Milliseconds()
	return key, a, nil
}
