// Package payload is the one pipeline between a stream of bytes (a bundle
// that git writes, upload-pack's answer, a ref list) and the chunks that
// get sealed and sent, in both directions and on both sides: Split cuts
// a stream into chunks while it is being written, and Reader puts chunks
// back together into the stream, in order, as they arrive. Both stream,
// so memory stays at a few chunks whatever the size.
//
// A payload is the bytes that get sealed, chunk by chunk:
//
//	payload = header data trailer
//	header  = 1 byte: the compression of data (None or Zstd)
//	data    = the plaintext, compressed or not
//	trailer = 8 bytes big-endian plaintext size, 32 bytes SHA-256 of the
//	          plaintext; always at the end of the final chunk
//
// The trailer lets the receiver check the whole plaintext against what
// the sender hashed, and it travels inside the last sealed chunk, so it
// is as confidential and as authenticated as the data, and no separate
// message has to carry it.
package payload

import (
	"bytes"
	"fmt"
	"io"
	"math"

	"github.com/klauspost/compress/zstd"

	"github.com/git-relay/git-relay/internal/seal"
)

// Compression ids, the payload's first byte.
const (
	None byte = 0
	Zstd byte = 1
)

// TrailerSize is the size of the trailer at the end of the final chunk.
const TrailerSize = 8 + 32

// HoldBack is how many bytes of plaintext a Reader keeps back until the
// whole payload has checked out. A pack ends with a 20-byte checksum, and
// a pack in git's side band ends with a few more bytes of framing, so a
// consumer never sees the end of a pack the payload did not vouch for.
const HoldBack = 4096

// Totals describe a payload once it is complete.
type Totals struct {
	Compression byte
	Size        int64    // plaintext bytes
	Hash        [32]byte // SHA-256 of the plaintext
	Payload     int64    // payload bytes (header, data and trailer)
	Chunks      uint32
}

// ChunkSize is how many payload bytes go in one chunk whose sealed form,
// plus extra bytes of framing, must fit a body of maxBody bytes.
func ChunkSize(maxBody int64, extra int) int {
	return int(maxBody) - seal.Overhead - extra
}

// minSaving is the fraction compression must save to be used. A pack is
// already zlib-compressed object by object, so zstd usually saves well
// under 1% of a bundle and costs CPU on both ends; it pays for ref lists
// and loosely packed data only.
const minSaving = 0.05

// zstdWindow is the window of the zstd frames a sender writes (the
// fastest level's own), and the largest a Reader accepts: a decoder
// allocates the window a frame declares before it decodes anything, so a
// frame of a few bytes that declared 64 MiB would cost the receiver that.
const zstdWindow = 4 << 20

func newEncoder(w io.Writer) (*zstd.Encoder, error) {
	return zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithWindowSize(zstdWindow), zstd.WithEncoderConcurrency(1), zstd.WithLowerEncoderMem(true))
}

// pays says whether compressing sample saves at least minSaving. A sample
// whose bytes are spread as evenly as compressed data's (a pack: git
// compresses each object and stores a repeated one once) is judged by
// that alone: a zstd trial of the first chunk of a push or a clone cost
// 2 to 50 ms here, a count of its bytes a tenth of a millisecond.
func pays(sample []byte) bool {
	return entropy(sample) < compressedEntropy && zstdPays(sample)
}

// zstdPays compresses sample to see whether that saves minSaving.
func zstdPays(sample []byte) bool {
	var cw countingWriter
	enc, err := newEncoder(&cw)
	if err != nil {
		return false
	}
	if _, err := enc.Write(sample); err != nil {
		return false
	}
	if err := enc.Close(); err != nil {
		return false
	}
	return float64(cw.n) <= float64(len(sample))*(1-minSaving)
}

// compressedEntropy is the order-0 entropy, in bits per byte, from which
// a sample counts as compressed already: within 1.25% of random bytes,
// where coding single bytes saves nothing and only long repeats could.
// Packs measure 7.99 and more; text and source code 4 to 6.
const compressedEntropy = 7.9

// entropy returns the order-0 entropy of b in bits per byte.
func entropy(b []byte) float64 {
	var count [256]int
	for _, c := range b {
		count[c]++
	}
	e := 0.0
	for _, c := range count {
		if c > 0 {
			p := float64(c) / float64(len(b))
			e -= p * math.Log2(p)
		}
	}
	return e
}

type countingWriter struct{ n int64 }

func (c *countingWriter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}

// Counter counts the bytes read through it.
type Counter struct {
	R io.Reader
	N int64
}

func (c *Counter) Read(p []byte) (int, error) {
	n, err := c.R.Read(p)
	c.N += int64(n)
	return n, err
}

// Bytes is a whole payload, for a plaintext small enough to send in one
// message: the header, the plaintext as it is and the trailer.
func Bytes(plain []byte) []byte {
	var b bytes.Buffer
	b.Grow(1 + len(plain) + TrailerSize)
	b.WriteByte(None)
	b.Write(plain)
	b.Write(trailer(int64(len(plain)), sha256Sum(plain)))
	return b.Bytes()
}

// Unbytes checks a whole payload made by Bytes or Split (one chunk) and
// returns its plaintext. limit bounds the plaintext's size.
func Unbytes(p []byte, limit int64) ([]byte, error) {
	r := NewReader(func() ([]byte, bool, error) { return p, true, nil }, limit)
	var out bytes.Buffer
	if _, err := out.ReadFrom(r); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// ErrMismatch is a payload whose plaintext does not match its trailer, or
// whose framing is broken.
var ErrMismatch = fmt.Errorf("payload does not check out")
