// Package sealtest holds the known-answer vectors of the sealed chunk
// format, shared by the tests of every side that opens chunks (the
// server's push assembly and the helper's fetch download), so that both
// are held to the same bytes.
package sealtest

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/git-relay/git-relay/internal/keyring"
)

// Vector is one case: a payload's chunks and what opening them must give.
type Vector struct {
	Name      string   `json:"name"`
	KeyID     string   `json:"keyId"`
	Secret    string   `json:"secret"` // hex
	Label     string   `json:"label"`
	Salt      string   `json:"salt"`     // hex
	Manifest  string   `json:"manifest"` // the exact manifest bytes
	Count     uint32   `json:"count"`    // the chunks the receiver expects; the last opens as final
	Chunks    []string `json:"chunks"`   // hex ciphertexts, in the order they arrive
	Plaintext string   `json:"plaintext,omitempty"`
	// Error is empty for a good vector; otherwise opening must fail, and
	// the error must name this chunk index.
	Error    string `json:"error,omitempty"`
	BadChunk int    `json:"badChunk"`
}

// Key returns the vector's key.
func (v Vector) Key() keyring.Key {
	s, _ := hex.DecodeString(v.Secret)
	return keyring.FromSecret(v.KeyID, s)
}

// SaltBytes returns the salt.
func (v Vector) SaltBytes() []byte { b, _ := hex.DecodeString(v.Salt); return b }

// ManifestHash returns the hash of the manifest bytes.
func (v Vector) ManifestHash() [32]byte { return sha256.Sum256([]byte(v.Manifest)) }

// ChunkBytes returns the chunks.
func (v Vector) ChunkBytes() [][]byte {
	out := make([][]byte, len(v.Chunks))
	for i, c := range v.Chunks {
		out[i], _ = hex.DecodeString(c)
	}
	return out
}

// Path is where the vectors live.
func Path() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "testdata", "vectors.json")
}

// Load reads the vectors.
func Load(t testing.TB) []Vector {
	t.Helper()
	b, err := os.ReadFile(Path())
	if err != nil {
		t.Fatalf("read vectors: %v", err)
	}
	var vs []Vector
	if err := json.Unmarshal(b, &vs); err != nil {
		t.Fatalf("decode vectors: %v", err)
	}
	if len(vs) == 0 {
		t.Fatal("no vectors")
	}
	return vs
}
