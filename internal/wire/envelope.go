package wire

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/git-relay/git-relay/internal/keyring"
)

// A message body is sealed as
//
//	nonce (12 random bytes) || AES-256-GCM(plaintext)
//
// under a key derived from the shared key with the request's nonce as
// salt, so that every request and its answer have keys of their own. The
// plaintext is a message and, optionally, raw bytes after it (an inline
// payload):
//
//	u32 big-endian length of the JSON || JSON || tail
//
// A request body's associated data is the request's canonical form (the
// signed fields, body length included); an answer's is its status, so
// an answer sealed for one status does not open as another.

// ErrSealed is a body that does not open.
var ErrSealed = errors.New("sealed body does not open")

func bodyAEAD(key keyring.Key, label, nonce string) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key.Derive(label, []byte(nonce), nil))
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// frame lays out a message and its tail.
func frame(msg any, tail []byte) ([]byte, error) {
	// A json.RawMessage goes as it is: its exact bytes may be what
	// something is bound to.
	j, ok := msg.(json.RawMessage)
	if !ok {
		var err error
		if j, err = json.Marshal(msg); err != nil {
			return nil, err
		}
	}
	b := make([]byte, 0, 4+len(j)+len(tail)+16)
	b = binary.BigEndian.AppendUint32(b, uint32(len(j)))
	b = append(b, j...)
	return append(b, tail...), nil
}

// unframe splits a plaintext into its JSON and its tail.
func unframe(plain []byte) (js, tail []byte, err error) {
	if len(plain) < 4 {
		return nil, nil, fmt.Errorf("%w: too short", ErrSealed)
	}
	n := binary.BigEndian.Uint32(plain)
	if uint64(n) > uint64(len(plain)-4) {
		return nil, nil, fmt.Errorf("%w: bad message length", ErrSealed)
	}
	return plain[4 : 4+n], plain[4+n:], nil
}

func seal(aead cipher.AEAD, plain []byte, aad string) []byte {
	out := make([]byte, 12, 12+len(plain)+aead.Overhead())
	if _, err := rand.Read(out); err != nil {
		panic(err)
	}
	return aead.Seal(out, out[:12], plain, []byte(aad))
}

func open(aead cipher.AEAD, body []byte, aad string) ([]byte, error) {
	if len(body) < 12+aead.Overhead() {
		return nil, fmt.Errorf("%w: too short", ErrSealed)
	}
	plain, err := aead.Open(nil, body[:12], body[12:], []byte(aad))
	if err != nil {
		return nil, ErrSealed
	}
	return plain, nil
}

// SealedLen is the length of a sealed body whose plaintext is n bytes.
func SealedLen(n int) int64 { return int64(12 + n + 16) }

// sealRequest seals a request's message for the signed fields a (whose
// Len must already be the sealed length).
func sealRequest(key keyring.Key, a Auth, method, path string, query map[string][]string, plain []byte) ([]byte, error) {
	aead, err := bodyAEAD(key, keyring.LabelRequestBody, a.Nonce)
	if err != nil {
		return nil, err
	}
	return seal(aead, plain, a.canonical(method, path, query)), nil
}

// OpenRequest opens a request's sealed message body and returns its
// JSON, exactly as the client wrote it, and the tail.
func OpenRequest(key keyring.Key, a Auth, method, path string, query map[string][]string, body []byte) (js, tail []byte, err error) {
	aead, err := bodyAEAD(key, keyring.LabelRequestBody, a.Nonce)
	if err != nil {
		return nil, nil, err
	}
	plain, err := open(aead, body, a.canonical(method, path, query))
	if err != nil {
		return nil, nil, err
	}
	return unframe(plain)
}

// SealAnswer seals an answer's message and tail for the request that
// carried nonce.
func SealAnswer(key keyring.Key, nonce string, status int, msg any, tail []byte) ([]byte, error) {
	plain, err := frame(msg, tail)
	if err != nil {
		return nil, err
	}
	aead, err := bodyAEAD(key, keyring.LabelResponseBody, nonce)
	if err != nil {
		return nil, err
	}
	return seal(aead, plain, "status "+strconv.Itoa(status)), nil
}

// openAnswer opens an answer's sealed body, decodes its JSON into msg
// and returns the tail.
func openAnswer(key keyring.Key, nonce string, status int, body []byte, msg any) ([]byte, error) {
	aead, err := bodyAEAD(key, keyring.LabelResponseBody, nonce)
	if err != nil {
		return nil, err
	}
	plain, err := open(aead, body, "status "+strconv.Itoa(status))
	if err != nil {
		return nil, err
	}
	js, tail, err := unframe(plain)
	if err != nil {
		return nil, err
	}
	if msg == nil {
		return tail, nil
	}
	if err := json.Unmarshal(js, msg); err != nil {
		return nil, fmt.Errorf("decode answer: %w", err)
	}
	return tail, nil
}
