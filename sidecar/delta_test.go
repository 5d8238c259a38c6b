package sidecar

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// plan diffs next against base the way a sync does: base by its
// signature, next streamed in uneven writes.
func planFor(t *testing.T, base, next []byte) *deltaPlan {
	t.Helper()
	sb := newSigBuilder(int64(len(base)))
	sb.Write(base)
	sig := sb.done()
	// A signature survives being kept on disk.
	var buf bytes.Buffer
	require.NoError(t, sig.writeTo(&buf))
	sig, err := readSignature(&buf)
	require.NoError(t, err)
	m := newMatcher(sig, "base")
	rng := rand.New(rand.NewPCG(3, 4))
	for rest := next; len(rest) > 0; {
		n := min(len(rest), 1+rng.IntN(300000))
		m.Write(rest[:n])
		rest = rest[n:]
	}
	return m.finish(int64(len(next)))
}

// TestDeltaRoundTrip: every kind of edit gives a delta that git's rules
// turn back into the new file, and that copies what did not change.
func TestDeltaRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	base := random(5<<20 + 777)
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	flip := func(b []byte, i int) []byte {
		c := bytes.Clone(b)
		c[i] ^= 0x55
		return c
	}
	for _, tc := range []struct {
		name       string
		next       []byte
		maxLiteral int64
	}{
		{"same", base, 0},
		{"one byte", flip(base, 3<<20+5), 16 << 10},
		{"first byte", flip(base, 0), 16 << 10},
		{"last byte", flip(base, len(base)-1), 16 << 10},
		{"inserted", cat(base[:1<<20+3], []byte("inserted text"), base[1<<20+3:]), 16 << 10},
		{"deleted", cat(base[:2<<20], base[2<<20+1000:]), 16 << 10},
		{"appended", cat(base, random(5000)), 16<<10 + 5000},
		{"truncated", base[:4<<20+1], 16 << 10},
		{"moved", cat(base[3<<20:], base[:3<<20]), 32 << 10},
		{"unrelated", random(2 << 20), 2 << 20},
		{"empty", nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := planFor(t, base, tc.next)
			require.LessOrEqual(t, p.literal, tc.maxLiteral, "bytes inserted")
			var delta bytes.Buffer
			require.NoError(t, p.writeDelta(&delta, bytes.NewReader(tc.next)))
			require.Equal(t, p.encodedLen(), int64(delta.Len()))
			got, err := applyDelta(base, delta.Bytes())
			require.NoError(t, err)
			require.True(t, bytes.Equal(tc.next, got), "the delta does not rebuild the file")
		})
	}
}

// TestSignatureReusesMatchedBlocks: the signature built while matching
// (with the checksums of unchanged blocks taken from the base) is the one
// built from the bytes alone.
func TestSignatureReusesMatchedBlocks(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	base := make([]byte, 3<<20+100)
	for i := range base {
		base[i] = byte(rng.Uint32())
	}
	next := bytes.Clone(base)
	next[1<<20+9] ^= 1
	next = append(next[:2<<20], append([]byte("shifted"), next[2<<20:]...)...)
	bsig := newSigBuilder(int64(len(base)))
	bsig.Write(base)
	m := newMatcher(bsig.done(), "base")
	fused := newSigBuilder(int64(len(next)))
	require.Equal(t, m.bs, fused.sig.blockSize)
	fused.known = m.knownBlock
	for rest := next; len(rest) > 0; {
		n := min(len(rest), 1+rng.IntN(200000))
		m.Write(rest[:n])
		fused.Write(rest[:n])
		rest = rest[n:]
	}
	m.finish(int64(len(next)))
	plain := newSigBuilder(int64(len(next)))
	plain.Write(next)
	require.Equal(t, plain.done(), fused.done())
}

// TestDeltaNoticesAChangedFile: bytes inserted from a file that changed
// after it was read are refused.
func TestDeltaNoticesAChangedFile(t *testing.T) {
	base := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	next := bytes.Clone(base)
	copy(next[500000:], "changed")
	p := planFor(t, base, next)
	later := bytes.Clone(next)
	copy(later[500000:], "CHANGED")
	require.ErrorIs(t, p.writeDelta(&bytes.Buffer{}, bytes.NewReader(later)), errFileChanged)
}

func TestVarintAndCopyEncoding(t *testing.T) {
	for _, v := range []uint64{0, 1, 127, 128, 300, 1 << 32, 1<<63 + 5} {
		b := appendVarint(nil, v)
		require.Equal(t, varintLen(v), len(b), "%d", v)
	}
	// Offsets and sizes with zero bytes in the middle are encoded
	// sparsely, as git does.
	require.Equal(t, []byte{0x80 | 0x04 | 0x10, 0x01, 0x05}, copyInstr(nil, 0x010000, 5))
}

// applyDelta is git's patch_delta, for tests: it applies delta to base.
func applyDelta(base, delta []byte) ([]byte, error) {
	rd := bytes.NewReader(delta)
	readVarint := func() (uint64, error) {
		var v uint64
		for shift := 0; ; shift += 7 {
			c, err := rd.ReadByte()
			if err != nil {
				return 0, err
			}
			v |= uint64(c&0x7f) << shift
			if c&0x80 == 0 {
				return v, nil
			}
		}
	}
	bsz, err := readVarint()
	if err != nil || bsz != uint64(len(base)) {
		return nil, errors.New("base size mismatch")
	}
	rsz, err := readVarint()
	if err != nil {
		return nil, err
	}
	var out []byte
	for rd.Len() > 0 {
		cmd, _ := rd.ReadByte()
		switch {
		case cmd&0x80 != 0:
			var off, n uint32
			for i := 0; i < 4; i++ {
				if cmd&(1<<i) != 0 {
					c, _ := rd.ReadByte()
					off |= uint32(c) << (8 * i)
				}
			}
			for i := 0; i < 3; i++ {
				if cmd&(0x10<<i) != 0 {
					c, _ := rd.ReadByte()
					n |= uint32(c) << (8 * i)
				}
			}
			if n == 0 {
				n = 0x10000
			}
			if uint64(off)+uint64(n) > uint64(len(base)) {
				return nil, errors.New("copy out of range")
			}
			out = append(out, base[off:off+n]...)
		case cmd != 0:
			lit := make([]byte, cmd)
			if _, err := io.ReadFull(rd, lit); err != nil {
				return nil, err
			}
			out = append(out, lit...)
		default:
			return nil, errors.New("bad delta opcode 0")
		}
	}
	if uint64(len(out)) != rsz {
		return nil, errors.New("result size mismatch")
	}
	return out, nil
}
