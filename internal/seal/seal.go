// Package seal owns the payload encryption: AES-256-GCM in the STREAM
// construction (Hoang, Reyhanitabar, Rogaway, Vizár), one sealed segment
// per chunk. The nonce is the big-endian chunk counter followed by a
// final-segment flag, and the associated data binds the manifest hash, the
// chunk index and the chunk count. A chunk that is moved, swapped,
// duplicated, taken from another push, dropped or added, or a stream whose
// final chunk is missing, fails to open.
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
	"io"

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
	count        uint32
}

// New derives the payload key from the shared key and returns the stream
// for a payload of count chunks. label says which direction the payload
// travels (keyring.LabelPushPayload or keyring.LabelFetchPayload).
func New(key keyring.Key, label string, salt []byte, manifestHash [32]byte, count uint32) (*Stream, error) {
	return NewWithKey(key.Derive(label, salt, manifestHash[:]), manifestHash, count)
}

// NewWithKey builds a stream from an already-derived 32-byte payload key.
func NewWithKey(payloadKey []byte, manifestHash [32]byte, count uint32) (*Stream, error) {
	if count == 0 {
		return nil, errors.New("a sealed payload has at least one chunk")
	}
	block, err := aes.NewCipher(payloadKey)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Stream{aead: aead, manifestHash: manifestHash, count: count}, nil
}

// Count is the number of chunks.
func (s *Stream) Count() uint32 { return s.count }

func (s *Stream) nonce(index uint32) []byte {
	n := make([]byte, 12)
	binary.BigEndian.PutUint64(n[3:11], uint64(index))
	if index == s.count-1 {
		n[11] = 1
	}
	return n
}

func (s *Stream) aad(index uint32) []byte {
	a := make([]byte, 0, 9+32+8)
	a = append(a, "GR1-CHUNK"...)
	a = append(a, s.manifestHash[:]...)
	a = binary.BigEndian.AppendUint32(a, index)
	a = binary.BigEndian.AppendUint32(a, s.count)
	return a
}

// Seal encrypts chunk index, appending to dst.
func (s *Stream) Seal(dst []byte, index uint32, plaintext []byte) ([]byte, error) {
	if index >= s.count {
		return nil, fmt.Errorf("chunk %d of %d: index out of range", index, s.count)
	}
	return s.aead.Seal(dst, s.nonce(index), plaintext, s.aad(index)), nil
}

// Open authenticates and decrypts chunk index, appending to dst.
func (s *Stream) Open(dst []byte, index uint32, ciphertext []byte) ([]byte, error) {
	if index >= s.count {
		return nil, fmt.Errorf("chunk %d of %d: %w (index out of range)", index, s.count, ErrAuth)
	}
	out, err := s.aead.Open(dst, s.nonce(index), ciphertext, s.aad(index))
	if err != nil {
		return nil, fmt.Errorf("chunk %d of %d: %w", index, s.count, ErrAuth)
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

// SealAll reads the payload from r and calls emit for each sealed chunk in
// order. The buffer passed to emit is reused: emit must not keep it.
// Memory stays at two chunks whatever the payload size.
func (s *Stream) SealAll(r io.Reader, chunkSize int, emit func(index uint32, sealed []byte) error) error {
	plain := make([]byte, chunkSize)
	sealed := make([]byte, 0, chunkSize+Overhead)
	for i := uint32(0); i < s.count; i++ {
		n, err := io.ReadFull(r, plain)
		last := i == s.count-1
		switch {
		case err == io.EOF || err == io.ErrUnexpectedEOF:
			if !last {
				return fmt.Errorf("payload ended at chunk %d of %d", i, s.count)
			}
		case err != nil:
			return err
		case last:
			// A full last chunk: make sure nothing follows it.
			var one [1]byte
			if m, _ := r.Read(one[:]); m > 0 {
				return fmt.Errorf("payload longer than %d chunks", s.count)
			}
		}
		out, err := s.Seal(sealed[:0], i, plain[:n])
		if err != nil {
			return err
		}
		if err := emit(i, out); err != nil {
			return err
		}
	}
	return nil
}
