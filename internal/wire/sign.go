// Package wire owns the relay's HTTP protocol: the JSON messages, the
// signatures on every request and response, and the client that speaks it.
//
// A stateless proxy sits between the helper and the server and may read,
// replay, reorder, drop or alter anything. So every request carries an
// HMAC-SHA256 over its method, logical path (the path below the API base,
// because the proxy rewrites the prefix and the Host), sorted query, key
// id, timestamp, nonce and body hash; the server keeps a nonce cache and a
// time window against replay. Every response is signed too, bound to the
// request's nonce and status, so a proxy can't turn a failure into
// "200 OK" or hand one request's answer to another.
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
	scheme          = "GR1-HMAC-SHA256"
)

// Window is how far a request's clock may be from the server's.
const Window = 300 * time.Second

// BodyHash is the hex SHA-256 of a body.
func BodyHash(body []byte) string {
	h := sha256.Sum256(body)
	return hex.EncodeToString(h[:])
}

func canonicalRequest(method, path string, query url.Values, keyID string, ts int64, nonce, bodyHash string) string {
	return strings.Join([]string{
		scheme, method, path, query.Encode(), keyID, strconv.FormatInt(ts, 10), nonce, bodyHash,
	}, "\n")
}

func mac(key []byte, msg string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return hex.EncodeToString(m.Sum(nil))
}

// NewNonce returns 16 random bytes in hex.
func NewNonce() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// SignRequest returns the Authorization header value for a request.
func SignRequest(key keyring.Key, method, path string, query url.Values, body []byte, ts int64, nonce string) string {
	sig := mac(key.Derive(keyring.LabelRequestMAC, nil, nil),
		canonicalRequest(method, path, query, key.ID, ts, nonce, BodyHash(body)))
	return fmt.Sprintf("%s kid=%s,ts=%d,nonce=%s,sig=%s", scheme, key.ID, ts, nonce, sig)
}

// SignResponse returns the X-Relay-Signature value of a response to the
// request that carried nonce.
func SignResponse(key keyring.Key, nonce string, status int, body []byte) string {
	return mac(key.Derive(keyring.LabelResponseMAC, nil, nil),
		strings.Join([]string{scheme + "-RESPONSE", nonce, strconv.Itoa(status), BodyHash(body)}, "\n"))
}

// VerifyResponse checks a response's signature.
func VerifyResponse(key keyring.Key, nonce string, status int, body []byte, sig string) bool {
	want := SignResponse(key, nonce, status, body)
	return hmac.Equal([]byte(want), []byte(sig))
}

// Auth is a parsed Authorization header.
type Auth struct {
	KeyID string
	TS    int64
	Nonce string
	Sig   string
}

// ErrUnauthenticated covers every reason a request is refused; the server
// answers them all alike so that a caller without the key learns nothing.
var ErrUnauthenticated = errors.New("request not authenticated")

// ParseAuth reads an Authorization header.
func ParseAuth(h string) (Auth, error) {
	rest, ok := strings.CutPrefix(h, scheme+" ")
	if !ok {
		return Auth{}, ErrUnauthenticated
	}
	var a Auth
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
		case "sig":
			a.Sig = v
		}
	}
	if a.KeyID == "" || a.Nonce == "" || len(a.Nonce) > 64 || a.Sig == "" {
		return Auth{}, ErrUnauthenticated
	}
	return a, nil
}

// Verifier checks request signatures and remembers nonces.
type Verifier struct {
	Ring *keyring.Ring
	Now  func() time.Time

	mu     sync.Mutex
	nonces map[string]int64 // nonce -> expiry (unix seconds)
}

// maxNonces bounds the replay cache; past it, the oldest half is dropped
// (they are outside the window by then in any realistic load).
const maxNonces = 1 << 20

// Verify authenticates a request. It returns the key that signed it.
func (v *Verifier) Verify(header, method, path string, query url.Values, body []byte) (keyring.Key, Auth, error) {
	a, err := ParseAuth(header)
	if err != nil {
		return keyring.Key{}, Auth{}, err
	}
	key, ok := v.Ring.Lookup(a.KeyID)
	if !ok {
		return keyring.Key{}, a, ErrUnauthenticated
	}
	now := time.Now
	if v.Now != nil {
		now = v.Now
	}
	t := now().Unix()
	if d := t - a.TS; d > int64(Window/time.Second) || d < -int64(Window/time.Second) {
		return keyring.Key{}, a, ErrUnauthenticated
	}
	want := mac(key.Derive(keyring.LabelRequestMAC, nil, nil),
		canonicalRequest(method, path, query, a.KeyID, a.TS, a.Nonce, BodyHash(body)))
	if !hmac.Equal([]byte(want), []byte(a.Sig)) {
		return keyring.Key{}, a, ErrUnauthenticated
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
	}
	v.nonces[a.Nonce] = t + 2*int64(Window/time.Second)
	return key, a, nil
}
