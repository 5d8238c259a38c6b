package payload

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/fuzztest"
	"github.com/git-relay/git-relay/internal/gittest"
)

// split cuts content into chunks as a sender does while it is written.
func split(t *testing.T, content []byte, chunkSize int) ([][]byte, *Totals) {
	t.Helper()
	free := make(chan []byte, 1)
	free <- make([]byte, 0, chunkSize)
	var chunks [][]byte
	tot, err := Split(bytes.NewReader(content), chunkSize, free, func(i uint32, final bool, c []byte) error {
		require.EqualValues(t, len(chunks), i)
		require.LessOrEqual(t, len(c), chunkSize)
		chunks = append(chunks, append([]byte(nil), c...))
		free <- c
		return nil
	})
	require.NoError(t, err)
	require.EqualValues(t, len(chunks), tot.Chunks)
	return chunks, tot
}

// feed returns a next function over chunks, the last one final.
func feed(chunks [][]byte) func() ([]byte, bool, error) {
	i := 0
	return func() ([]byte, bool, error) {
		if i >= len(chunks) {
			return nil, false, io.ErrUnexpectedEOF
		}
		i++
		return chunks[i-1], i == len(chunks), nil
	}
}

func TestSplitAndReadBack(t *testing.T) {
	random := make([]byte, 300_000)
	_, _ = rand.Read(random)
	for _, tc := range []struct {
		name    string
		content []byte
		want    byte
	}{
		{"text compresses", bytes.Repeat([]byte("a line of source code\n"), 200_000), Zstd},
		{"random does not", random, None},
		{"empty", nil, None},
		{"one byte", []byte{7}, None},
		{"trailer spills into its own chunk", random[:1000-1-TrailerSize+5], None},
		{"exactly one chunk", random[:1000-1-TrailerSize], None},
	} {
		t.Run(tc.name, func(t *testing.T) {
			chunks, tot := split(t, tc.content, 1000)
			require.Equal(t, tc.want, tot.Compression)
			require.EqualValues(t, len(tc.content), tot.Size)
			require.Equal(t, sha256.Sum256(tc.content), tot.Hash)
			r := NewReader(feed(chunks), int64(len(tc.content))+1)
			got, err := io.ReadAll(r)
			require.NoError(t, err)
			require.True(t, bytes.Equal(tc.content, got))
			require.Equal(t, *tot, r.Totals())
		})
	}
}

func TestReaderHoldsBackUntilTheFinalChunk(t *testing.T) {
	content := make([]byte, 50_000)
	_, _ = rand.Read(content)
	chunks, _ := split(t, content, 4096)
	// The final chunk never comes: the reader gives everything but the
	// held-back tail, then the error.
	boom := errors.New("connection lost")
	i := 0
	r := NewReader(func() ([]byte, bool, error) {
		if i == len(chunks)-1 {
			return nil, false, boom
		}
		i++
		return chunks[i-1], false, nil
	}, 1<<20)
	got, err := io.ReadAll(r)
	require.ErrorIs(t, err, boom)
	require.Less(t, len(got), len(content)-HoldBack+4096, "no more than the chunks before the last, minus the held-back bytes")
	require.Equal(t, content[:len(got)], got)
}

func TestReaderRefusesWhatDoesNotCheckOut(t *testing.T) {
	random := make([]byte, 30_000)
	_, _ = rand.Read(random)
	text := bytes.Repeat([]byte("0123456789"), 3000)
	for name, mangle := range map[string]func([][]byte) [][]byte{
		"wrong trailer hash": func(c [][]byte) [][]byte {
			last := c[len(c)-1]
			last[len(last)-1] ^= 1
			return c
		},
		"wrong trailer size": func(c [][]byte) [][]byte {
			last := c[len(c)-1]
			last[len(last)-TrailerSize+7]++
			return c
		},
		"a chunk dropped": func(c [][]byte) [][]byte { return append(c[:1:1], c[2:]...) },
		"bytes after the compressed data": func(c [][]byte) [][]byte {
			last := c[len(c)-1]
			return append(c[:len(c)-1], append(append(append([]byte(nil), last[:len(last)-TrailerSize]...), 1, 2, 3), last[len(last)-TrailerSize:]...))
		},
		"unknown compression": func(c [][]byte) [][]byte { c[0][0] = 9; return c },
		"no trailer":          func(c [][]byte) [][]byte { return [][]byte{{None, 1, 2}} },
	} {
		t.Run(name, func(t *testing.T) {
			content := random
			if name == "bytes after the compressed data" {
				content = text
			}
			chunks, tot := split(t, content, 4096)
			if name == "bytes after the compressed data" {
				require.Equal(t, Zstd, tot.Compression)
			}
			cs := make([][]byte, len(chunks))
			for i := range chunks {
				cs[i] = append([]byte(nil), chunks[i]...)
			}
			r := NewReader(feed(mangle(cs)), 1<<20)
			got, err := io.ReadAll(r)
			require.Error(t, err)
			require.Less(t, len(got), len(content)-HoldBack+1)
		})
	}
	// A plaintext over the limit stops there (a decompression bomb).
	chunks, _ := split(t, text, 4096)
	r := NewReader(feed(chunks), int64(len(text))-1)
	_, err := io.ReadAll(r)
	require.ErrorIs(t, err, ErrMismatch)
}

func TestBytesRoundTrip(t *testing.T) {
	for _, p := range [][]byte{nil, []byte("ls-refs answer")} {
		got, err := Unbytes(Bytes(p), 100)
		require.NoError(t, err)
		require.Equal(t, string(p), string(got))
	}
	_, err := Unbytes(Bytes([]byte("too long")), 3)
	require.Error(t, err)
}

func TestRampedChunks(t *testing.T) {
	require.Equal(t, []int{256 << 10, 1 << 20, 4_000_000, 4_000_000, 4_000_000},
		[]int{Ramp(0, 4_000_000), Ramp(1, 4_000_000), Ramp(2, 4_000_000), Ramp(3, 4_000_000), Ramp(9, 4_000_000)})
	require.Equal(t, 65_000, Ramp(0, 65_000))
	// What senders cut: doubling, and always what Fits allows.
	for i := range uint32(8) {
		want := min(256<<10<<i, 4_000_000)
		require.Equal(t, want, Cut(i, 4_000_000), "chunk %d", i)
		require.True(t, Fits(i, 4_000_000, Cut(i, 4_000_000), false), "chunk %d", i)
	}
	content := make([]byte, 7<<20)
	_, _ = rand.Read(content)
	free := make(chan []byte, 1)
	free <- make([]byte, 0, 3<<20)
	var sizes []int
	var chunks [][]byte
	_, err := SplitRamp(bytes.NewReader(content), 3<<20, free, func(i uint32, final bool, c []byte) error {
		sizes = append(sizes, len(c))
		chunks = append(chunks, append([]byte(nil), c...))
		free <- c
		return nil
	}, Ramp)
	require.NoError(t, err)
	require.Equal(t, []int{256 << 10, 1 << 20, 3 << 20}, sizes[:3], "every chunk but the last is its full ramped size")
	got, err := io.ReadAll(NewReader(feed(chunks), 8<<20))
	require.NoError(t, err)
	require.True(t, bytes.Equal(content, got))
}

// TestReaderRefusesALargeZstdWindow: a zstd frame of a few hundred bytes
// that declares a 64 MiB window is refused as a broken payload before the
// decoder allocates that window; the windows our own encoder writes pass.
func TestReaderRefusesALargeZstdWindow(t *testing.T) {
	var frame bytes.Buffer
	enc, err := zstd.NewWriter(&frame, zstd.WithWindowSize(64<<20))
	require.NoError(t, err)
	_, err = enc.Write(make([]byte, 1<<22))
	require.NoError(t, err)
	require.NoError(t, enc.Close())
	p := append([]byte{Zstd}, frame.Bytes()...)
	p = append(p, trailer(1<<22, sha256.Sum256(make([]byte, 1<<22)))...)
	require.Less(t, len(p), 1000)

	var got []byte
	allocated := fuzztest.Allocated(func() {
		got, err = Unbytes(p, 1<<23)
	})
	require.ErrorIs(t, err, ErrMismatch)
	require.Empty(t, got)
	require.Less(t, allocated, uint64(16<<20), "bytes allocated for a %d-byte payload", len(p))

	// What Split writes decodes, whatever its size.
	text := bytes.Repeat([]byte("a line of source code\n"), 1<<18) // 5.5 MiB, more than a window
	chunks, tot := split(t, text, 1<<20)
	require.Equal(t, Zstd, tot.Compression)
	back, err := io.ReadAll(NewReader(feed(chunks), int64(len(text))))
	require.NoError(t, err)
	require.True(t, bytes.Equal(text, back))
}

func TestFits(t *testing.T) {
	const size = 4_000_000
	for _, c := range []struct {
		i     uint32
		n     int
		final bool
		fits  bool
	}{
		{0, 256 << 10, false, true},
		{0, 256<<10 - 1, false, false}, // below its ramped size, which is MinChunk
		{0, 256<<10 + 1, false, false},
		{0, 1, true, true},
		{1, MinChunk, false, true}, // cut smaller than Ramp(1) for a slow link
		{1, MinChunk - 1, false, false},
		{1, 1 << 20, false, true},
		{1, 1<<20 + 1, true, false},
		{5, size, false, true},
		{5, size + 1, false, false},
		{5, 0, true, true},
		{5, -1, true, false},
	} {
		require.Equal(t, c.fits, Fits(c.i, size, c.n, c.final), "chunk %d of %d bytes, final %v", c.i, c.n, c.final)
	}
	// A chunk size below MinChunk: every chunk but the final one is full.
	require.True(t, Fits(3, 64<<10, 64<<10, false))
	require.False(t, Fits(3, 64<<10, 64<<10-1, false))
}

// A pack is judged compressed by its bytes alone, and the zstd trial that
// spares agrees; text is still tried, and compresses.
func TestPaysJudgesPacksByTheirBytes(t *testing.T) {
	gittest.NeedGit(t)
	dir := t.TempDir()
	r := gittest.Repo(t, dir)
	gittest.Run(t, r, "init", "-q")
	for i := range 300 {
		var b strings.Builder
		for j := range 60 {
			fmt.Fprintf(&b, "func f%d_%d(x int) int { return x*%d + %d } // %x\n", i, j, i*j+1, j, sha256.Sum256([]byte{byte(i), byte(j)}))
		}
		require.NoError(t, os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%d.go", i)), []byte(b.String()), 0o644))
	}
	gittest.Run(t, r, "add", ".")
	gittest.Run(t, r, "commit", "-qm", "source")
	pack, err := r.RunInput(t.Context(), strings.NewReader("HEAD\n"), "pack-objects", "--revs", "--stdout", "-q")
	require.NoError(t, err)
	require.Greater(t, len(pack), streamSample)
	sample := []byte(pack[:streamSample])
	require.GreaterOrEqual(t, entropy(sample), compressedEntropy)
	require.False(t, pays(sample))
	require.False(t, zstdPays(sample), "the trial the pack was spared says the same")

	text := []byte(strings.Repeat("func f(x int) int { return x*2 + 1 } // a line of source\n", streamSample/50))[:streamSample]
	require.Less(t, entropy(text), compressedEntropy)
	require.True(t, pays(text))
}
