package payload

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"github.com/git-relay/git-relay/internal/wire"
)

// streamSample is how much of a bundle that is being sent while git writes
// it is compressed to decide whether compressing the rest pays. It is
// small, because the decision holds up the first chunk.
const streamSample = 1 << 20

// Split reads a bundle from r while it is being written, compresses it
// when a sample shows that pays, and cuts the result into chunks of
// chunkSize bytes, calling emit for each in order with final set on the
// last one (an empty payload is one empty, final chunk). Each chunk is
// read into a buffer taken from free, which must hold buffers of capacity
// at least chunkSize; emit owns the buffer until it sends it back on free,
// so the number of buffers bounds the memory in use whatever the bundle's
// size. A chunk is known to be the last only when the next read finds the
// end, so Split reads one byte ahead. decided, when not nil, hears the
// compression before the first chunk is emitted.
func Split(r io.Reader, chunkSize int, free chan []byte, decided func(compression string) error, emit func(i uint32, final bool, chunk []byte) error) (*wire.Totals, error) {
	h := sha256.New()
	bundle := &Counter{R: io.TeeReader(r, h)}
	sample := make([]byte, streamSample)
	n, err := io.ReadFull(bundle, sample)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return nil, fmt.Errorf("read bundle: %w", err)
	}
	sample = sample[:n]
	t := &wire.Totals{Compression: wire.CompressNone}
	src := io.MultiReader(bytes.NewReader(sample), bundle)
	if n > 0 && pays(sample) {
		t.Compression = wire.CompressZstd
		pr, pw := io.Pipe()
		go func(plain io.Reader) { pw.CloseWithError(compress(pw, plain)) }(src)
		defer pr.Close()
		src = pr
	}
	if decided != nil {
		if err := decided(t.Compression); err != nil {
			return nil, err
		}
	}
	in := bufio.NewReaderSize(src, 64<<10)
	for i := uint32(0); ; i++ {
		buf := <-free
		if cap(buf) < chunkSize {
			return nil, errors.New("chunk buffer too small")
		}
		buf = buf[:chunkSize]
		m, err := io.ReadFull(in, buf)
		final := false
		switch {
		case err == io.EOF || err == io.ErrUnexpectedEOF:
			final = true
		case err != nil:
			free <- buf
			return nil, fmt.Errorf("read bundle: %w", err)
		default:
			if _, perr := in.Peek(1); perr == io.EOF {
				final = true
			} else if perr != nil {
				free <- buf
				return nil, fmt.Errorf("read bundle: %w", perr)
			}
		}
		t.PayloadSize += int64(m)
		if err := emit(i, final, buf[:m]); err != nil {
			return nil, err
		}
		if final {
			t.Chunks = i + 1
			break
		}
	}
	t.BundleSize = bundle.N
	t.BundleHash = hex.EncodeToString(h.Sum(nil))
	return t, nil
}

// pays says whether compressing sample saves at least minSaving.
func pays(sample []byte) bool {
	var cw countingWriter
	if err := compress(&cw, bytes.NewReader(sample)); err != nil {
		return false
	}
	return float64(cw.n) <= float64(len(sample))*(1-minSaving)
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
