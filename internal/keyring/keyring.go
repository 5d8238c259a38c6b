// Package keyring owns the shared relay keys: their text form, the key
// files that hold one or several of them (several during a rotation), and
// the HKDF derivation of every working key, so that the master secret is
// never used directly by the MAC or the cipher.
package keyring

import (
	"bufio"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
)

// prefix starts every key's text form, so that a key pasted in the wrong
// place is recognisable and the format can evolve.
const prefix = "grk1"

// Labels for HKDF: one per use, so that a key derived for one purpose can
// never be confused with another.
const (
	LabelRequestMAC   = "git-relay v3 request mac"
	LabelResponseMAC  = "git-relay v3 response mac"
	LabelRequestBody  = "git-relay v3 request body"
	LabelResponseBody = "git-relay v3 response body"
	LabelUpload       = "git-relay v3 upload payload"
	LabelDownload     = "git-relay v3 download payload"
)

// Key is one shared secret with its public id.
type Key struct {
	ID     string // 8 hex digits, sent with every request
	secret []byte // 32 bytes
}

// Generate makes a new random key.
func Generate() (Key, error) {
	id := make([]byte, 4)
	secret := make([]byte, 32)
	if _, err := rand.Read(id); err != nil {
		return Key{}, err
	}
	if _, err := rand.Read(secret); err != nil {
		return Key{}, err
	}
	return Key{ID: hex.EncodeToString(id), secret: secret}, nil
}

// String is the key's one-line text form: grk1.<id>.<secret in base64url>.
func (k Key) String() string {
	return prefix + "." + k.ID + "." + base64.RawURLEncoding.EncodeToString(k.secret)
}

// Parse reads a key's text form.
func Parse(s string) (Key, error) {
	parts := strings.Split(strings.TrimSpace(s), ".")
	if len(parts) != 3 || parts[0] != prefix {
		return Key{}, errors.New("not a git-relay key (expected grk1.<id>.<secret>, as printed by `git-relay-server keygen`)")
	}
	id, err := hex.DecodeString(parts[1])
	if err != nil || len(id) != 4 {
		return Key{}, errors.New("bad key id (expected 8 hex digits)")
	}
	secret, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || len(secret) != 32 {
		return Key{}, errors.New("bad key secret (expected 32 bytes in base64url)")
	}
	return Key{ID: parts[1], secret: secret}, nil
}

// FromSecret builds a key from raw material; tests use it for fixed vectors.
func FromSecret(id string, secret []byte) Key {
	return Key{ID: id, secret: append([]byte(nil), secret...)}
}

// Derive returns a 32-byte key for one purpose (label), optionally bound to
// a salt and extra context (a manifest hash).
func (k Key) Derive(label string, salt, context []byte) []byte {
	out, err := hkdf.Key(sha256.New, k.secret, salt, label+"\x00"+string(context), 32)
	if err != nil {
		// Only possible for absurd lengths, which we never ask for.
		panic(err)
	}
	return out
}

// Ring is the set of keys a server accepts (or a client holds), by id.
type Ring struct {
	keys  map[string]Key
	first Key
}

// Lookup finds a key by id without trying the others.
func (r *Ring) Lookup(id string) (Key, bool) {
	k, ok := r.keys[id]
	return k, ok
}

// Primary is the first key in the file: the one a client signs with.
func (r *Ring) Primary() Key { return r.first }

// Len is the number of keys.
func (r *Ring) Len() int { return len(r.keys) }

// ErrKeyFileMode is a key file that others than its owner can read.
var ErrKeyFileMode = errors.New("key file readable by others")

// ReadFile loads a key file: one key per line, blank lines and lines
// starting with '#' ignored. As ssh does with a private key, it refuses a
// file that its group or others may read or write.
func ReadFile(path string) (*Ring, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read key file: %w", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s has mode %04o, and a shared key must be private to its owner: run chmod 600 %s", ErrKeyFileMode, path, fi.Mode().Perm(), shellQuote(path))
	}
	r := &Ring{keys: map[string]Key{}}
	sc := bufio.NewScanner(f)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		k, err := Parse(text)
		if err != nil {
			return nil, fmt.Errorf("key file %q line %d: %w", path, line, err)
		}
		if len(r.keys) == 0 {
			r.first = k
		}
		r.keys[k.ID] = k
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read key file %q: %w", path, err)
	}
	if len(r.keys) == 0 {
		return nil, fmt.Errorf("key file %q holds no key (make one with `git-relay-server keygen`)", path)
	}
	return r, nil
}

// NewRing builds a ring from keys, the first being primary.
func NewRing(keys ...Key) *Ring {
	r := &Ring{keys: map[string]Key{}}
	for i, k := range keys {
		if i == 0 {
			r.first = k
		}
		r.keys[k.ID] = k
	}
	return r
}

// WriteFile writes a new key file holding k, readable by its owner only.
// It refuses to replace an existing file.
func WriteFile(path string, k Key) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("write key file: %s already exists (remove it first, or choose another name)", path)
	}
	if err != nil {
		return fmt.Errorf("write key file: %w", err)
	}
	// The umask may have taken bits away, never added them; be explicit
	// anyway, as the file may sit on a file system with other defaults.
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("write key file: %w", err)
	}
	if _, err := fmt.Fprintln(f, k.String()); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("write key file: %w", err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return fmt.Errorf("write key file: %w", err)
	}
	return nil
}

// shellQuote quotes a path for a command the user may paste.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-~+") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
