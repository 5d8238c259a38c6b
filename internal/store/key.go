package store

import (
	"errors"
	"fmt"
	"strings"
)

// ErrInvalidKey: a key or list prefix outside the alphabet the Store
// documents. Every implementation refuses it before touching storage, so
// a key can never name a file outside a local store's folder.
var ErrInvalidKey = errors.New("store: invalid key")

const (
	// MaxKeyLen bounds a key in bytes. S3 allows 1024 bytes including
	// the store's own prefix; a local store needs room for its folder.
	MaxKeyLen = 512
	// MaxSegmentLen bounds one slash-separated segment, well under the
	// 255 bytes a file name may have on Linux file systems.
	MaxSegmentLen = 128
)

// ValidKey reports whether key is a valid object key: slash-separated
// segments of [A-Za-z0-9._-], none empty, none starting with a dot (which
// also rules out "." and ".."), at most MaxKeyLen bytes.
func ValidKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty", ErrInvalidKey)
	}
	if len(key) > MaxKeyLen {
		return fmt.Errorf("%w: %d bytes, more than %d", ErrInvalidKey, len(key), MaxKeyLen)
	}
	for seg := range strings.SplitSeq(key, "/") {
		if err := validSegment(seg); err != nil {
			return fmt.Errorf("%w %q: %s", ErrInvalidKey, key, err)
		}
	}
	return nil
}

// ValidPrefix reports whether prefix can begin a valid key, so that List
// refuses what no key could match in the same way on every store. The
// empty prefix lists everything.
func ValidPrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	// A prefix begins some valid key exactly when the prefix followed by
	// one more letter is a valid key: "a/" and "a/b" do, "a//", "/a"
	// and "a/." do not.
	if err := ValidKey(prefix + "x"); err != nil {
		return fmt.Errorf("%w: list prefix %q", ErrInvalidKey, prefix)
	}
	return nil
}

func validSegment(seg string) error {
	switch {
	case seg == "":
		return errors.New("empty segment")
	case seg[0] == '.':
		return errors.New("segment starts with a dot")
	case len(seg) > MaxSegmentLen:
		return fmt.Errorf("segment longer than %d bytes", MaxSegmentLen)
	}
	for i := 0; i < len(seg); i++ {
		if !keyByte(seg[i]) {
			return fmt.Errorf("byte %q outside [A-Za-z0-9._-]", seg[i])
		}
	}
	return nil
}

func keyByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '.' || c == '_' || c == '-'
}
