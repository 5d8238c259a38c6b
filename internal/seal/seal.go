// Package seal owns the payload encryption: AES-256-GCM in the STREAM
// construction (Hoang, Reyhanitabar, Rogaway, Vizár), one sealed segment
// per chunk. The nonce is the big-endian chunk counter followed by a
// final-segment flag, and the associated data binds the manifest hash and
// the chunk index; the final chunk's also binds the chunk count. A chunk
// that is moved, swapped, duplicated, taken from another push, dropped or
// added, or a stream whose final chunk is missing, fails to open.
//
// The count is bound by the final chunk rather than by every chunk so that
// a sender can seal and send chunk 0 while the rest of the payload is
// still being produced (a push uploads its bundle while git writes it).
// That is how age and libsodium's secretstream use STREAM: the final flag
// alone stops truncation and extension, because no one without the key
// can make a chunk that opens as the last one, or one that opens after it.
//
// Each payload has its own key, derived with HKDF from the shared secret,
// a fresh random salt and the manifest hash, so the master key never
// touches the cipher and no two payloads share a key.
package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/git-relay/git-relay/internal/keyring"
)

// Overhead is what sealing adds to each chunk.
const Overhead = 16

// ErrAuth is returned for any chunk that fails authentication.
var ErrAuth = errors.New("chunk failed authentication")

// Stream seals and opens the chunks of one payload.
type Stream struct {
	aead         cipher.AEAD
	manifestHash [32]byte
}

// New derives the payload key from the shared key and returns the stream
// for one payload. label says which direction the payload travels
// (keyring.LabelUpload or keyring.LabelDownload).
func New(key keyring.Key, label string, salt []byte, manifestHash [32]byte) (*Stream, error) {
	return NewWithKey(key.Derive(label, salt, manifestHash[:]), manifestHash)
}

// NewWithKey builds a stream from an already-derived 32-byte payload key.
func NewWithKey(payloadKey []byte, manifestHash [32]byte) (*Stream, error) {
	block, err := aes.NewCipher(payloadKey)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Stream{aead: aead, manifestHash: manifestHash}, nil
}

// Nonce returns the STREAM nonce of a chunk: an 11-byte big-endian counter
// and the final flag.
func Nonce(index uint32, final bool) []byte {
	n := make([]byte, 12)
	binary.BigEndian.PutUint64(n[3:11], uint64(index))
	if final {
		n[11] = 1
	}
	return n
}

// AAD returns a chunk's associated data: a format tag, the manifest hash,
// the index, and the chunk count on the final chunk (0 on the others).
func AAD(manifestHash [32]byte, index uint32, final bool) []byte {
	a := make([]byte, 0, 9+32+8)
	a = append(a, "GR3-CHUNK"...)
	a = append(a, manifestHash[:]...)
	a = binary.BigEndian.AppendUint32(a, index)
	count := uint32(0)
	if final {
		count = index + 1
	}
	return binary.BigEndian.AppendUint32(a, count)
}

// Seal encrypts chunk index, appending to dst; final marks the payload's
// last chunk. dst may be plaintext[:0] to seal in place.
func (s *Stream) Seal(dst []byte, index uint32, final bool, plaintext []byte) []byte {
	return s.aead.Seal(dst, Nonce(index, final), plaintext, AAD(s.manifestHash, index, final))
}

// Open authenticates and decrypts chunk index, appending to dst. final
// says whether the receiver takes it for the last chunk: a chunk opens
// only where, and as what, its sender sealed it.
func (s *Stream) Open(dst []byte, index uint32, final bool, ciphertext []byte) ([]byte, error) {
	out, err := s.aead.Open(dst, Nonce(index, final), ciphertext, AAD(s.manifestHash, index, final))
	if err != nil {
		what := ""
		if final {
			what = " (as the final chunk)"
		}
		return nil, fmt.Errorf("chunk %d%s: %w", index, what, ErrAuth)
	}
	return out, nil
}

// Chunks is the number of chunks for size payload bytes at chunkSize
// plaintext bytes each. An empty payload still has one (empty) chunk, so
// that the final flag is always present.
func Chunks(size int64, chunkSize int) uint32 {
	if size <= 0 {
		return 1
	}
	return uint32((size + int64(chunkSize) - 1) / int64(chunkSize))
}
