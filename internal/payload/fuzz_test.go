package payload

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/fuzztest"
)

// fuzzTimeout is how long one input may run: far more than any takes.
const fuzzTimeout = 30 * time.Second

// errLost stands for a chunk that never comes (a dropped connection).
var errLost = errors.New("chunk lost")

// cut splits stream into chunks at the lengths sizes gives (each byte a
// length, 0 meaning an empty chunk; the rest goes in a last chunk), the
// last of them final when final is set; with lost, next fails after the
// last chunk instead of the stream ending there.
func cut(stream, sizes []byte, final, lost bool) (next func() ([]byte, bool, error), chunks [][]byte) {
	for _, s := range sizes {
		n := min(int(s), len(stream))
		chunks = append(chunks, stream[:n])
		stream = stream[n:]
	}
	if len(stream) > 0 || len(chunks) == 0 {
		chunks = append(chunks, stream)
	}
	i := 0
	return func() ([]byte, bool, error) {
		if i >= len(chunks) {
			if lost {
				return nil, false, errLost
			}
			return nil, false, io.ErrUnexpectedEOF
		}
		i++
		return chunks[i-1], final && !lost && i == len(chunks), nil
	}, chunks
}

// readAll reads r to its end, one small read at a time as a consumer
// might, and returns what it handed over and the error that ended it.
func readAll(r io.Reader) ([]byte, error) {
	var out []byte
	buf := make([]byte, 1000)
	for {
		n, err := r.Read(buf)
		out = append(out, buf[:n]...)
		if err != nil {
			return out, err
		}
	}
}

// reference decodes a whole payload the slow, obvious way: the header
// byte, the data (decompressed), and the trailer.
func reference(payload []byte) (plain []byte, ok bool) {
	if len(payload) < 1+TrailerSize {
		return nil, false
	}
	data, trail := payload[1:len(payload)-TrailerSize], payload[len(payload)-TrailerSize:]
	switch payload[0] {
	case None:
		plain = data
	case Zstd:
		d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(64<<20))
		if err != nil {
			return nil, false
		}
		defer d.Close()
		if plain, err = d.DecodeAll(data, nil); err != nil {
			return nil, false
		}
	default:
		return nil, false
	}
	sum := sha256.Sum256(plain)
	return plain, binary.BigEndian.Uint64(trail) == uint64(len(plain)) && bytes.Equal(trail[8:], sum[:])
}

// FuzzReader feeds the Reader arbitrary chunk sequences: any header byte,
// data and trailer, cut anywhere, with or without a final chunk, or with
// a chunk that never comes. It must never panic, never hand over more
// than its limit, never hand over the held-back bytes of a payload that
// does not check out, and end with io.EOF only for a payload whose
// plaintext matches its trailer, handing over exactly that plaintext.
func FuzzReader(f *testing.F) {
	text := bytes.Repeat([]byte("a line of source code\n"), 500)
	random := make([]byte, 9000)
	for i := range random {
		random[i] = byte(i*7 + i*i*13>>3)
	}
	for _, plain := range [][]byte{nil, []byte("x"), text, random} {
		for _, chunkSize := range []int{TrailerSize + 2, 100, 4096, 1 << 16} {
			chunks := splitChunks(f, plain, chunkSize)
			var stream, sizes []byte
			for _, c := range chunks[:len(chunks)-1] {
				stream = append(stream, c...)
				sizes = append(sizes, byte(min(len(c), 255)))
			}
			stream = append(stream, chunks[len(chunks)-1]...)
			f.Add(stream, sizes, true, false, uint32(len(plain)+1))
		}
	}
	// A zstd frame that declares a large window, a bomb, a bad header.
	bomb := func() []byte {
		var b bytes.Buffer
		enc, _ := zstd.NewWriter(&b, zstd.WithWindowSize(1<<26))
		enc.Write(make([]byte, 1<<22))
		enc.Close()
		return b.Bytes()
	}()
	f.Add(append(append([]byte{Zstd}, bomb...), trailer(1<<22, [32]byte{})...), []byte{5, 200}, true, false, uint32(1<<20))
	f.Add(Bytes([]byte("inline answer")), []byte{}, true, false, uint32(100))
	f.Add([]byte{7}, []byte{}, true, false, uint32(100))
	f.Fuzz(func(t *testing.T, stream, sizes []byte, final, lost bool, limit uint32) {
		defer fuzztest.Watchdog(t, fuzzTimeout)()
		lim := int64(limit % (2 << 20))
		next, chunks := cut(stream, sizes, final, lost)
		var out []byte
		var err error
		var r *Reader
		// The held-back bytes and a zstd decoder's window are the memory a
		// Reader may take, whatever a small input claims.
		fuzztest.Bounded(t, len(stream), 16<<20, 64, func() {
			r = NewReader(next, lim)
			out, err = readAll(r)
			r.Close()
		})
		require.Error(t, err, "Read ended without an error or io.EOF")
		require.LessOrEqual(t, int64(len(out)), lim, "handed over more than the limit")

		whole := bytes.Join(chunks, nil)
		plain, ok := reference(whole)
		// The trailer travels whole in the final chunk.
		ok = ok && len(chunks[len(chunks)-1]) >= TrailerSize
		if err == io.EOF {
			require.True(t, final && !lost, "io.EOF without the final chunk")
			require.True(t, ok, "io.EOF for a payload that does not check out")
			require.Equal(t, string(plain), string(out))
			tot := r.Totals()
			require.Equal(t, whole[0], tot.Compression)
			require.EqualValues(t, len(out), tot.Size)
			require.Equal(t, sha256.Sum256(out), tot.Hash)
			require.EqualValues(t, len(whole), tot.Payload)
			require.EqualValues(t, len(chunks), tot.Chunks)
			return
		}
		// Whatever went wrong, the last HoldBack bytes of what the Reader
		// decoded stayed with it.
		require.LessOrEqual(t, int64(len(out))+HoldBack, max(r.n, HoldBack), "handed over held-back bytes of a payload that failed: %v", err)
		// The payload's own fault, or the source's.
		if !errors.Is(err, ErrMismatch) && !(lost && errors.Is(err, errLost)) {
			t.Fatalf("unexpected error %v", err)
		}
		if ok && final && !lost && int64(len(plain)) <= lim {
			t.Fatalf("a payload that checks out failed: %v", err)
		}
		if len(whole) > 0 && whole[0] == None && len(whole) >= 1+TrailerSize {
			// What was handed over is the start of the data.
			require.True(t, bytes.HasPrefix(whole[1:], out))
		}
	})
}

// splitChunks is Split into a list of chunks.
func splitChunks(t testing.TB, plain []byte, chunkSize int) [][]byte {
	free := make(chan []byte, 1)
	free <- make([]byte, 0, chunkSize)
	var chunks [][]byte
	_, err := Split(bytes.NewReader(plain), chunkSize, free, func(i uint32, final bool, c []byte) error {
		chunks = append(chunks, append([]byte(nil), c...))
		free <- c
		return nil
	})
	require.NoError(t, err)
	return chunks
}

// FuzzSplitReader: any plaintext, split into chunks of any size, comes
// back whole through a Reader, with the totals Split reported; the
// chunks respect their size and only the last is final; without its
// final chunk or over a limit one byte short, the Reader fails and keeps
// the held-back bytes.
func FuzzSplitReader(f *testing.F) {
	f.Add([]byte(""), uint16(0))
	f.Add([]byte("x"), uint16(1))
	f.Add(bytes.Repeat([]byte("0123456789"), 1000), uint16(4096))
	f.Add(bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef, 1, 2, 3}, 3000), uint16(100))
	f.Fuzz(func(t *testing.T, plain []byte, size uint16) {
		defer fuzztest.Watchdog(t, fuzzTimeout)()
		chunkSize := TrailerSize + 2 + int(size)%(1<<16)
		free := make(chan []byte, 1)
		free <- make([]byte, 0, chunkSize)
		var chunks [][]byte
		var finals []bool
		tot, err := Split(bytes.NewReader(plain), chunkSize, free, func(i uint32, final bool, c []byte) error {
			require.EqualValues(t, len(chunks), i)
			require.LessOrEqual(t, len(c), chunkSize)
			chunks = append(chunks, append([]byte(nil), c...))
			finals = append(finals, final)
			free <- c
			return nil
		})
		require.NoError(t, err)
		require.True(t, finals[len(finals)-1])
		for _, fin := range finals[:len(finals)-1] {
			require.False(t, fin)
		}
		require.EqualValues(t, len(chunks), tot.Chunks)
		require.EqualValues(t, len(plain), tot.Size)
		require.Equal(t, sha256.Sum256(plain), tot.Hash)
		require.EqualValues(t, len(bytes.Join(chunks, nil)), tot.Payload)

		r := NewReader(feed(chunks), int64(len(plain)))
		got, err := readAll(r)
		require.ErrorIs(t, err, io.EOF)
		require.Equal(t, string(plain), string(got))
		require.Equal(t, *tot, r.Totals())

		if len(chunks) > 1 {
			// The final chunk never comes.
			next, _ := cut(bytes.Join(chunks[:len(chunks)-1], nil), nil, false, false)
			r := NewReader(next, int64(len(plain)))
			got, err := readAll(r)
			require.Error(t, err)
			require.NotErrorIs(t, err, io.EOF)
			require.LessOrEqual(t, len(got), max(0, len(plain)-HoldBack))
		}
		if len(plain) > 0 {
			r := NewReader(feed(chunks), int64(len(plain))-1)
			got, err := readAll(r)
			require.ErrorIs(t, err, ErrMismatch)
			require.LessOrEqual(t, len(got), max(0, len(plain)-HoldBack))
		}
		if len(plain) < 1<<16 {
			got, err := Unbytes(Bytes(plain), int64(len(plain)))
			require.NoError(t, err)
			require.Equal(t, string(plain), string(got))
		}
	})
}
