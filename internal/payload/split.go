package payload

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/git-relay/git-relay/internal/mem"
	"github.com/git-relay/git-relay/internal/seal"
)

// streamSample is how much of a stream is compressed to decide whether
// compressing the rest pays: a ramped payload's first chunk (Cut), since
// the decision holds that chunk up.
const streamSample = rampStart

// minCompress is the smallest plaintext worth compressing: below it, the
// bytes zstd would save take less time to send than making its encoder
// takes (milliseconds), and a ref listing or a request is all latency.
const minCompress = 16 << 10

// Split reads a plaintext from r while it is being written and emits its
// payload in chunks of at most chunkSize bytes, in order, with final set
// on the last one (an empty plaintext still makes one chunk). Each chunk
// is built in a buffer taken from free; emit owns the buffer until it
// sends it back on free, so the number of buffers bounds the memory in
// use whatever the size. A buffer too small for the chunk it is taken for
// (nil, say) is replaced by a new one with room for the chunk and its seal
// (seal.Overhead): a sender that fills free with nil buffers pays for
// memory as the chunks need it, not before the first one. A chunk is
// known to be the last only when the next read finds the end, so Split
// reads one byte ahead.
func Split(r io.Reader, chunkSize int, free chan []byte, emit func(i uint32, final bool, chunk []byte) error) (*Totals, error) {
	return SplitRamp(r, chunkSize, free, emit, func(uint32, int) int { return chunkSize })
}

// rampStart is the size of a ramped payload's first chunk.
const rampStart = 256 << 10

// Ramp is the most chunk i of a ramped payload may hold: from 256 KiB,
// four times as much at a time, up to chunkSize. The first chunks are
// small, so that the other side starts working a few round trips after
// the transfer begins; the rest go in chunks as large as a body allows.
func Ramp(i uint32, chunkSize int) int {
	if i >= 4 {
		return chunkSize
	}
	return min(chunkSize, rampStart<<(2*i))
}

// Cut is the size a sender gives chunk i of a ramped payload: from
// 256 KiB, doubling, up to chunkSize, within Ramp. Doubling keeps the
// other side fed: git writes a pack about twice as fast as index-pack
// reads one, so each chunk is ready about when the one before has been
// read, where a chunk four times the size would leave a gap.
func Cut(i uint32, chunkSize int) int {
	if i >= 16 {
		return chunkSize
	}
	return min(chunkSize, rampStart<<i)
}

// MinChunk is the least a chunk but the final one may hold, unless its
// ramped size is less: a payload can't be split into a flood of tiny
// chunks, yet a sender may cut chunks smaller than Ramp to suit a slow
// link (see Fits).
const MinChunk = rampStart

// Fits reports whether n bytes may be chunk i of a payload cut for
// chunkSize: never more than Ramp(i, chunkSize), and, unless final, at
// least MinChunk or that ramped size, whichever is less.
func Fits(i uint32, chunkSize, n int, final bool) bool {
	most := Ramp(i, chunkSize)
	if final {
		return n >= 0 && n <= most
	}
	return n >= min(most, MinChunk) && n <= most
}

// SplitRamp is Split with chunk i sizes(i, chunkSize) bytes (kept
// between TrailerSize+1 and chunkSize), but the final one, which holds
// what is left. sizes is called as each chunk is begun, so it may depend
// on how the chunks before went.
func SplitRamp(r io.Reader, chunkSize int, free chan []byte, emit func(i uint32, final bool, chunk []byte) error, sizes func(i uint32, chunkSize int) int) (*Totals, error) {
	if chunkSize <= TrailerSize+1 {
		return nil, fmt.Errorf("chunk size %d is too small", chunkSize)
	}
	h := sha256.New()
	plain := &Counter{R: io.TeeReader(r, h)}
	// A small plaintext is read into a small buffer: a megabyte of fresh
	// memory takes a while to touch.
	sample := make([]byte, minCompress)
	n, err := io.ReadFull(plain, sample)
	if err == nil {
		grown := make([]byte, streamSample)
		copy(grown, sample)
		var m int
		m, err = io.ReadFull(plain, grown[n:])
		sample, n = grown, n+m
	}
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return nil, fmt.Errorf("read: %w", err)
	}
	sample = sample[:n]
	t := &Totals{Compression: None}
	src := io.MultiReader(bytes.NewReader(sample), plain)
	if n >= minCompress && pays(sample) {
		t.Compression = Zstd
		pr, pw := io.Pipe()
		go func(in io.Reader) {
			enc, err := newEncoder(pw)
			if err == nil {
				if _, err = io.Copy(enc, in); err != nil {
					enc.Close()
				} else {
					err = enc.Close()
				}
			}
			pw.CloseWithError(err)
		}(src)
		defer pr.Close()
		src = pr
	}
	in := bufio.NewReaderSize(io.MultiReader(bytes.NewReader([]byte{t.Compression}), src), 64<<10)
	var trail []byte
	for i := uint32(0); ; i++ {
		buf := <-free
		size := min(max(sizes(i, chunkSize), TrailerSize+1), chunkSize)
		if cap(buf) < size {
			// A ramp's small first chunks get buffers their size; the
			// rest get one that any later chunk fits.
			n := chunkSize
			if size <= chunkSize/4 {
				n = size
			}
			buf = mem.Fresh(n + seal.Overhead)
		}
		buf = buf[:size]
		m := 0
		if trail == nil {
			var err error
			m, err = io.ReadFull(in, buf)
			switch {
			case err == io.EOF || err == io.ErrUnexpectedEOF:
				trail = trailer(plain.N, [32]byte(h.Sum(nil)))
			case err != nil:
				free <- buf
				return nil, fmt.Errorf("read: %w", err)
			default:
				if _, perr := in.Peek(1); perr == io.EOF {
					trail = trailer(plain.N, [32]byte(h.Sum(nil)))
				} else if perr != nil {
					free <- buf
					return nil, fmt.Errorf("read: %w", perr)
				}
			}
		}
		final := false
		if trail != nil && m+len(trail) <= size {
			m += copy(buf[m:], trail)
			final = true
		}
		t.Payload += int64(m)
		if err := emit(i, final, buf[:m]); err != nil {
			return nil, err
		}
		if final {
			t.Chunks = i + 1
			break
		}
	}
	t.Size = plain.N
	t.Hash = [32]byte(h.Sum(nil))
	return t, nil
}

func trailer(size int64, hash [32]byte) []byte {
	b := binary.BigEndian.AppendUint64(make([]byte, 0, TrailerSize), uint64(size))
	return append(b, hash[:]...)
}

func sha256Sum(b []byte) [32]byte { return sha256.Sum256(b) }
