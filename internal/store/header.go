package store

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
)

// Every object starts with a 32-byte header that both implementations
// write and strip: "grobj1 ", 24 hex digits of a random nonce, "\n".
//
// The nonce is what makes an ETag change on every write, even of the same
// bytes. S3 derives its ETag from the MD5 of the body, so without the
// nonce two writes of one state would share an ETag and a compare-and-swap
// could succeed against a version that was replaced and then restored (the
// ABA problem). The local folder takes the nonce itself as the ETag: it
// costs no hashing, survives restarts and needs no shared counter between
// processes. The header is ASCII so that an operator can still read a
// state with `tail -n +2`.
const (
	headerLen   = 32
	headerMagic = "grobj1 "
)

var errNoHeader = errors.New("not an object of this store: no header")

// newHeader returns a fresh header and its nonce.
func newHeader() (hdr [headerLen]byte, nonce string) {
	var n [12]byte
	// crypto/rand.Read never returns an error (it crashes the program
	// instead), so there is nothing to handle.
	_, _ = rand.Read(n[:])
	nonce = hex.EncodeToString(n[:])
	copy(hdr[:], headerMagic)
	copy(hdr[len(headerMagic):], nonce)
	hdr[headerLen-1] = '\n'
	return hdr, nonce
}

// parseHeader returns the nonce of a header.
func parseHeader(b []byte) (string, error) {
	if len(b) < headerLen || string(b[:len(headerMagic)]) != headerMagic || b[headerLen-1] != '\n' {
		return "", errNoHeader
	}
	nonce := string(b[len(headerMagic) : headerLen-1])
	if _, err := hex.DecodeString(nonce); err != nil {
		return "", fmt.Errorf("%w: bad nonce %q", errNoHeader, nonce)
	}
	return nonce, nil
}
