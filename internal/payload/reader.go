package payload

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/klauspost/compress/zstd"
)

// Reader reads a payload's plaintext back from its chunks, in order, as
// they come: next returns each chunk's opened bytes (blocking until the
// chunk is there) and whether it is the final one. The Reader decompresses
// and hashes as it goes, and keeps the last HoldBack bytes of plaintext
// back until the final chunk has come and the plaintext matches its
// trailer; only then does it hand them over and report io.EOF. Any
// mismatch, broken framing, a plaintext larger than the limit, or an
// error from next is returned by Read instead, and the held-back bytes
// are never handed over. So a consumer that streams what it reads into
// something that completes only at the end (git index-pack, upstream's
// receive-pack) can never complete what the payload did not vouch for.
type Reader struct {
	raw    *chunkStream
	dec    io.Reader
	zdec   *zstd.Decoder
	h      hash.Hash
	n      int64
	limit  int64
	buf    []byte // plaintext read, from off on not yet handed over
	off    int
	ok     bool // the plaintext checked out: hand over everything
	err    error
	totals Totals
}

// NewReader reads the payload whose chunks next returns; limit bounds the
// plaintext's size (a decompression bomb stops there).
func NewReader(next func() (chunk []byte, final bool, err error), limit int64) *Reader {
	return &Reader{raw: &chunkStream{next: next}, h: sha256.New(), limit: limit}
}

// Waits reports whether the next Read has to wait for another chunk: what
// was read so far is all there is to pass on until it comes. It is exact
// for a payload sent as it is; for a compressed one it is a guess, since
// the decompressor keeps buffers of its own.
func (r *Reader) Waits() bool {
	if r.err != nil || r.ok {
		return false
	}
	return len(r.buf)-r.off <= HoldBack && len(r.raw.cur) == 0 && !r.raw.final
}

// Totals describes the payload once Read has returned io.EOF.
func (r *Reader) Totals() Totals { return r.totals }

// Close releases the decompressor.
func (r *Reader) Close() error {
	if r.zdec != nil {
		r.zdec.Close()
		r.zdec = nil
	}
	return nil
}

func (r *Reader) fail(err error) error {
	if r.err == nil {
		r.err = err
	}
	r.Close()
	return r.err
}

func (r *Reader) Read(p []byte) (int, error) {
	for {
		if r.err != nil {
			return 0, r.err
		}
		avail := len(r.buf) - r.off
		if !r.ok {
			avail -= HoldBack
		}
		if avail > 0 {
			n := copy(p, r.buf[r.off:r.off+avail])
			r.off += n
			return n, nil
		}
		if r.ok {
			return 0, io.EOF
		}
		if err := r.fill(); err != nil {
			return 0, r.fail(err)
		}
	}
}

// fill reads more plaintext into buf, or checks the whole at its end.
func (r *Reader) fill() error {
	if r.dec == nil {
		c, err := r.raw.header()
		if err != nil {
			return err
		}
		r.totals.Compression = c
		switch c {
		case None:
			r.dec = r.raw
		case Zstd:
			d, err := zstd.NewReader(r.raw, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxMemory(64<<20), zstd.WithDecoderMaxWindow(zstdWindow))
			if err != nil {
				return err
			}
			r.zdec, r.dec = d, d
		default:
			return fmt.Errorf("%w: unknown compression %d", ErrMismatch, c)
		}
	}
	if r.off > 0 && r.off >= len(r.buf)/2 {
		r.buf = append(r.buf[:0], r.buf[r.off:]...)
		r.off = 0
	}
	if cap(r.buf)-len(r.buf) < 32<<10 {
		r.buf = append(r.buf, make([]byte, 64<<10)...)[:len(r.buf)]
	}
	n, err := r.dec.Read(r.buf[len(r.buf):cap(r.buf)])
	if n > 0 {
		r.h.Write(r.buf[len(r.buf) : len(r.buf)+n])
		r.buf = r.buf[:len(r.buf)+n]
		r.n += int64(n)
		if r.n > r.limit {
			return fmt.Errorf("%w: larger than %d bytes", ErrMismatch, r.limit)
		}
	}
	if err == io.EOF {
		return r.check()
	}
	if err != nil && r.zdec != nil && r.raw.err == nil {
		// The decompressor refused its data (a broken frame, or one that
		// declares a window larger than ours): broken framing.
		return fmt.Errorf("%w: %v", ErrMismatch, err)
	}
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return err
	}
	if err != nil {
		return fmt.Errorf("%w: %v", ErrMismatch, err)
	}
	return nil
}

// check compares the whole plaintext with the trailer.
func (r *Reader) check() error {
	// The decompressor may stop before the data does: anything after a
	// zstd frame's end is not something the sender compressed.
	if r.zdec != nil {
		if m, _ := io.Copy(io.Discard, r.raw); m > 0 {
			return fmt.Errorf("%w: bytes after the compressed data", ErrMismatch)
		}
	}
	if !r.raw.ended() {
		return fmt.Errorf("%w: the final chunk has not come", ErrMismatch)
	}
	size, sum := r.raw.trailer()
	if size != r.n || !bytes.Equal(sum, r.h.Sum(nil)) {
		return fmt.Errorf("%w: %d bytes that hash otherwise than the %d its sender hashed", ErrMismatch, r.n, size)
	}
	r.totals.Size = r.n
	copy(r.totals.Hash[:], sum)
	r.totals.Payload = r.raw.total
	r.totals.Chunks = r.raw.chunks
	r.ok = true
	return r.Close()
}

// chunkStream is the payload's data: the chunks one after the other,
// without the header byte and the final chunk's trailer.
type chunkStream struct {
	next   func() ([]byte, bool, error)
	cur    []byte
	final  bool
	chunks uint32
	total  int64
	trail  [TrailerSize]byte
	err    error
}

func (c *chunkStream) load() error {
	if c.err != nil {
		return c.err
	}
	b, final, err := c.next()
	if err != nil {
		c.err = err
		return err
	}
	c.chunks++
	c.total += int64(len(b))
	if final {
		if len(b) < TrailerSize {
			c.err = fmt.Errorf("%w: the final chunk has no trailer", ErrMismatch)
			return c.err
		}
		copy(c.trail[:], b[len(b)-TrailerSize:])
		b = b[:len(b)-TrailerSize]
	}
	c.cur, c.final = b, final
	return nil
}

// header takes the payload's first byte.
func (c *chunkStream) header() (byte, error) {
	for len(c.cur) == 0 {
		if c.final {
			return 0, fmt.Errorf("%w: no header", ErrMismatch)
		}
		if err := c.load(); err != nil {
			return 0, err
		}
	}
	h := c.cur[0]
	c.cur = c.cur[1:]
	return h, nil
}

func (c *chunkStream) Read(p []byte) (int, error) {
	for len(c.cur) == 0 {
		if c.final {
			return 0, io.EOF
		}
		if err := c.load(); err != nil {
			return 0, err
		}
	}
	n := copy(p, c.cur)
	c.cur = c.cur[n:]
	return n, nil
}

func (c *chunkStream) ended() bool { return c.final && len(c.cur) == 0 }

func (c *chunkStream) trailer() (int64, []byte) {
	return int64(binary.BigEndian.Uint64(c.trail[:8])), c.trail[8:]
}
