package sidecar

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"math/bits"
	"os"
)

// Big files (bigFileSize and up) are read, hashed and diffed by the
// sidecar itself rather than by git, in one streaming pass:
//
//   - git's own delta search holds both versions and an index about three
//     times the size of the old one in memory (some 200 MiB for a 40 MiB
//     file), and stores every version it hashes, compressed (over a second
//     for 40 MiB of incompressible data);
//   - here the old version is known by its signature alone (a weak rolling
//     checksum and a strong hash per block, as rsync does), kept from the
//     sync that sent it, so a changed file is read once, with memory
//     bounded by the read buffer and the signatures, and nothing is stored.
//
// The result is an ordinary git delta (copy and insert instructions
// against the old blob), which the workspace's git applies to the blob it
// already holds; the new blob's id, checked by git there, proves the
// result.
const bigFileSize = 1 << 20

// maxCopy is the most one copy instruction of a git delta can carry.
const maxCopy = 0xffffff

// maxDeltaFile is the largest file sent as a delta. The workspace's git
// applies a delta with the base mapped, the base read and the result in
// memory, about three times the file's size (some 124 MiB at this size);
// a bigger file travels whole, streamed at both ends, so that memory
// stays flat whatever its size. (A git delta also cannot address a base
// past 4 GiB.)
const maxDeltaFile = 40 << 20

// blockSizeFor picks the signature block size for a file: about the
// square root of its size (rsync's rule), a power of two from 2 KiB to
// 1 MiB.
func blockSizeFor(size int64) int {
	b := 2048
	for int64(b)*int64(b) < size && b < 1<<20 {
		b <<= 1
	}
	return b
}

// signature describes a blob by blocks: enough to find its blocks in
// another file, without its bytes.
type signature struct {
	blockSize int
	size      int64
	weak      []uint32
	strong    [][16]byte
}

// rollsum is rsync's rolling checksum over a window of fixed length.
type rollsum struct {
	a, b uint32
	n    uint32
}

func (r *rollsum) init(p []byte) {
	// b = sum of (n-i)*p[i] = sum over i of the running sum a after p[i].
	r.n = uint32(len(p))
	var a, b uint32
	for len(p) >= 8 {
		a += uint32(p[0])
		b += a
		a += uint32(p[1])
		b += a
		a += uint32(p[2])
		b += a
		a += uint32(p[3])
		b += a
		a += uint32(p[4])
		b += a
		a += uint32(p[5])
		b += a
		a += uint32(p[6])
		b += a
		a += uint32(p[7])
		b += a
		p = p[8:]
	}
	for _, c := range p {
		a += uint32(c)
		b += a
	}
	r.a, r.b = a, b
}

func (r *rollsum) roll(out, in byte) {
	r.a += uint32(in) - uint32(out)
	r.b += r.a - r.n*uint32(out)
}

func (r *rollsum) sum() uint32 { return r.a&0xffff | r.b<<16 }

func weakOf(p []byte) uint32 {
	var r rollsum
	r.init(p)
	return r.sum()
}

func strongOf(h hash.Hash, p []byte) [16]byte {
	h.Reset()
	h.Write(p)
	var s [16]byte
	copy(s[:], h.Sum(nil))
	return s
}

// sigBuilder computes the signature of data written to it.
type sigBuilder struct {
	sig  signature
	buf  []byte
	hash hash.Hash
	// known, when set, gives a block's checksums if the matcher found it
	// equal to a block of the base (at the same offset and size), so
	// that an unchanged block is not hashed twice.
	known func(off int64) (uint32, [16]byte, bool)
}

func newSigBuilder(size int64) *sigBuilder {
	bs := blockSizeFor(size)
	return &sigBuilder{sig: signature{blockSize: bs}, buf: make([]byte, 0, bs), hash: sha256.New()}
}

func (s *sigBuilder) Write(p []byte) (int, error) {
	n := len(p)
	s.sig.size += int64(n)
	bs := s.sig.blockSize
	for len(p) > 0 {
		if len(s.buf) == 0 && len(p) >= bs {
			s.add(p[:bs])
			p = p[bs:]
			continue
		}
		k := min(bs-len(s.buf), len(p))
		s.buf = append(s.buf, p[:k]...)
		p = p[k:]
		if len(s.buf) == bs {
			s.add(s.buf)
			s.buf = s.buf[:0]
		}
	}
	return n, nil
}

func (s *sigBuilder) add(block []byte) {
	if s.known != nil && len(block) == s.sig.blockSize {
		if w, st, ok := s.known(int64(len(s.sig.weak)) * int64(s.sig.blockSize)); ok {
			s.sig.weak = append(s.sig.weak, w)
			s.sig.strong = append(s.sig.strong, st)
			return
		}
	}
	s.sig.weak = append(s.sig.weak, weakOf(block))
	s.sig.strong = append(s.sig.strong, strongOf(s.hash, block))
}

func (s *sigBuilder) done() *signature {
	if len(s.buf) > 0 {
		s.add(s.buf)
		s.buf = s.buf[:0]
	}
	return &s.sig
}

// lastLen is the length of the signature's last block (the others are
// blockSize long).
func (s *signature) lastLen() int {
	if len(s.weak) == 0 {
		return 0
	}
	return int(s.size - int64(len(s.weak)-1)*int64(s.blockSize))
}

const sigMagic = "git-sidecar-sig-1\n"

func (s *signature) writeTo(w io.Writer) error {
	bw := bufio.NewWriter(w)
	bw.WriteString(sigMagic)
	var hdr [16]byte
	binary.BigEndian.PutUint32(hdr[0:], uint32(s.blockSize))
	binary.BigEndian.PutUint64(hdr[4:], uint64(s.size))
	binary.BigEndian.PutUint32(hdr[12:], uint32(len(s.weak)))
	bw.Write(hdr[:])
	var e [4]byte
	for i := range s.weak {
		binary.BigEndian.PutUint32(e[:], s.weak[i])
		bw.Write(e[:])
		bw.Write(s.strong[i][:])
	}
	return bw.Flush()
}

func readSignature(r io.Reader) (*signature, error) {
	br := bufio.NewReader(r)
	magic := make([]byte, len(sigMagic))
	if _, err := io.ReadFull(br, magic); err != nil || string(magic) != sigMagic {
		return nil, errors.New("not a signature file")
	}
	var hdr [16]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return nil, err
	}
	s := &signature{
		blockSize: int(binary.BigEndian.Uint32(hdr[0:])),
		size:      int64(binary.BigEndian.Uint64(hdr[4:])),
	}
	n := int64(binary.BigEndian.Uint32(hdr[12:]))
	if s.blockSize <= 0 || s.blockSize > 1<<20 || s.size < 0 ||
		n != (s.size+int64(s.blockSize)-1)/int64(s.blockSize) {
		return nil, errors.New("damaged signature file")
	}
	s.weak = make([]uint32, n)
	s.strong = make([][16]byte, n)
	var e [20]byte
	for i := range s.weak {
		if _, err := io.ReadFull(br, e[:]); err != nil {
			return nil, err
		}
		s.weak[i] = binary.BigEndian.Uint32(e[:4])
		copy(s.strong[i][:], e[4:])
	}
	return s, nil
}

// deltaOp is one instruction of a delta plan: copy n bytes of the base
// from off, or insert the n bytes of the new file at off (whose CRC-32 was
// crc when the file was read, so that a file that changes before they are
// sent is noticed).
type deltaOp struct {
	copy bool
	off  int64
	n    int64
	crc  uint32
}

// deltaPlan turns a base blob into the new file.
type deltaPlan struct {
	baseID     string
	baseSize   int64
	resultSize int64
	ops        []deltaOp
	literal    int64 // bytes inserted
}

// matcher finds the base's blocks in a stream, as rsync's sender does,
// and plans the new stream as copies from the base and literal runs.
type matcher struct {
	base   *signature
	bs     int
	filter []uint64 // a bit per weak-checksum bucket, to skip most lookups
	blocks map[uint32][]int32
	strong hash.Hash

	buf      []byte // stream bytes from bufOff on
	bufOff   int64
	pos      int64 // start of the window
	roll     rollsum
	rollOK   bool
	litStart int64
	litCRC   uint32
	crcPos   int64 // literal bytes before crcPos are in litCRC
	plan     deltaPlan
	// aligned maps a block-aligned offset of the stream to the base
	// block found there, for the new signature (see sigBuilder.known).
	aligned map[int64]int32
}

// knownBlock is sigBuilder.known for a new signature with the base's
// block size: a block the matcher found at an aligned offset has the base
// block's checksums.
func (m *matcher) knownBlock(off int64) (uint32, [16]byte, bool) {
	j, ok := m.aligned[off]
	if !ok {
		return 0, [16]byte{}, false
	}
	delete(m.aligned, off)
	return m.base.weak[j], m.base.strong[j], true
}

const filterBits = 20

func filterSlot(w uint32) uint32 { return (w * 0x9e3779b1) >> (32 - filterBits) }

func newMatcher(base *signature, baseID string) *matcher {
	m := &matcher{
		base:   base,
		bs:     base.blockSize,
		filter: make([]uint64, (1<<filterBits)/64),
		blocks: make(map[uint32][]int32, len(base.weak)),
		strong: sha256.New(),
		plan:   deltaPlan{baseID: baseID, baseSize: base.size},
	}
	// Only whole blocks are looked for in the middle of the stream; the
	// base's short last block can only match the stream's end.
	whole := len(base.weak)
	if base.lastLen() != m.bs {
		whole--
	}
	for i := 0; i < whole; i++ {
		w := base.weak[i]
		slot := filterSlot(w)
		m.filter[slot/64] |= 1 << (slot % 64)
		m.blocks[w] = append(m.blocks[w], int32(i))
	}
	return m
}

// Write feeds the next bytes of the new file.
func (m *matcher) Write(p []byte) (int, error) {
	m.buf = append(m.buf, p...)
	m.scan(false)
	return len(p), nil
}

func (m *matcher) at(off int64) byte { return m.buf[off-m.bufOff] }

// scan advances the window as far as the buffered bytes allow; at the end
// of the stream it also settles the tail.
func (m *matcher) scan(eof bool) {
	bs := int64(m.bs)
	end := m.bufOff + int64(len(m.buf))
	for m.pos+bs <= end {
		if !m.rollOK {
			m.roll.init(m.buf[m.pos-m.bufOff : m.pos-m.bufOff+bs])
			m.rollOK = true
		}
		w := m.roll.sum()
		slot := filterSlot(w)
		if m.filter[slot/64]&(1<<(slot%64)) != 0 {
			if cands, ok := m.blocks[w]; ok {
				s := strongOf(m.strong, m.buf[m.pos-m.bufOff:m.pos-m.bufOff+bs])
				if j, ok := m.find(cands, s); ok {
					if m.pos%bs == 0 {
						if m.aligned == nil {
							m.aligned = map[int64]int32{}
						}
						m.aligned[m.pos] = j
					}
					m.flushLiteral(m.pos)
					m.addCopy(int64(j)*bs, bs)
					m.pos += bs
					m.litStart, m.crcPos = m.pos, m.pos
					m.rollOK = false
					continue
				}
			}
		}
		if m.pos+bs == end {
			break // rolling needs the next byte
		}
		m.roll.roll(m.at(m.pos), m.at(m.pos+bs))
		m.pos++
	}
	if eof {
		m.tail(end)
	}
	// Keep only the bytes the window still needs; literal bytes that
	// leave the buffer go into the run's CRC first.
	if m.crcPos < m.pos {
		m.litCRC = crc32.Update(m.litCRC, crc32.IEEETable, m.buf[m.crcPos-m.bufOff:m.pos-m.bufOff])
		m.crcPos = m.pos
	}
	if drop := m.pos - m.bufOff; drop > 0 && drop >= int64(len(m.buf))/2 {
		m.buf = append(m.buf[:0], m.buf[drop:]...)
		m.bufOff = m.pos
	}
}

func (m *matcher) find(cands []int32, s [16]byte) (int32, bool) {
	for _, j := range cands {
		if m.base.strong[j] == s {
			return j, true
		}
	}
	return 0, false
}

// tail settles the bytes after the last whole window: the base's short
// last block, or literal bytes.
func (m *matcher) tail(end int64) {
	last := len(m.base.weak) - 1
	if n := int64(m.base.lastLen()); last >= 0 && n != int64(m.bs) && end-m.pos >= n && n > 0 {
		start := end - n
		win := m.buf[start-m.bufOff : end-m.bufOff]
		if weakOf(win) == m.base.weak[last] && strongOf(m.strong, win) == m.base.strong[last] {
			m.pos = start
			m.flushLiteral(start)
			m.addCopy(int64(last)*int64(m.bs), n)
			m.pos, m.litStart, m.crcPos = end, end, end
			return
		}
	}
	m.pos = end
	m.flushLiteral(end)
	m.litStart, m.crcPos = end, end
}

func (m *matcher) flushLiteral(upTo int64) {
	if upTo <= m.litStart {
		return
	}
	crc := crc32.Update(m.litCRC, crc32.IEEETable, m.buf[m.crcPos-m.bufOff:upTo-m.bufOff])
	m.plan.ops = append(m.plan.ops, deltaOp{off: m.litStart, n: upTo - m.litStart, crc: crc})
	m.plan.literal += upTo - m.litStart
	m.litCRC = 0
}

func (m *matcher) addCopy(off, n int64) {
	if k := len(m.plan.ops); k > 0 {
		if prev := &m.plan.ops[k-1]; prev.copy && prev.off+prev.n == off {
			prev.n += n
			return
		}
	}
	m.plan.ops = append(m.plan.ops, deltaOp{copy: true, off: off, n: n})
}

// finish ends the stream of size bytes and returns the plan.
func (m *matcher) finish(size int64) *deltaPlan {
	m.scan(true)
	m.plan.resultSize = size
	m.buf = nil
	return &m.plan
}

func varintLen(v uint64) int {
	return max(1, (bits.Len64(v)+6)/7)
}

func appendVarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

// copyInstr encodes one copy instruction (n at most maxCopy).
func copyInstr(b []byte, off, n uint32) []byte {
	cmd := byte(0x80)
	var args []byte
	for i := 0; i < 4; i++ {
		if c := byte(off >> (8 * i)); c != 0 {
			cmd |= 1 << i
			args = append(args, c)
		}
	}
	for i := 0; i < 3; i++ {
		if c := byte(n >> (8 * i)); c != 0 {
			cmd |= 0x10 << i
			args = append(args, c)
		}
	}
	return append(append(b, cmd), args...)
}

// encodedLen is the length of the git delta the plan encodes to.
func (p *deltaPlan) encodedLen() int64 {
	n := int64(varintLen(uint64(p.baseSize)) + varintLen(uint64(p.resultSize)))
	var scratch [16]byte
	for _, op := range p.ops {
		if op.copy {
			for off, left := op.off, op.n; left > 0; {
				k := min(left, maxCopy)
				n += int64(len(copyInstr(scratch[:0], uint32(off), uint32(k))))
				off += k
				left -= k
			}
			continue
		}
		n += op.n + (op.n+126)/127
	}
	return n
}

// writeDelta writes the git delta, reading the inserted bytes from f (the
// new file) and checking them against the CRCs taken when it was read.
func (p *deltaPlan) writeDelta(w io.Writer, f io.ReaderAt) error {
	b := appendVarint(nil, uint64(p.baseSize))
	b = appendVarint(b, uint64(p.resultSize))
	if _, err := w.Write(b); err != nil {
		return err
	}
	buf := make([]byte, 0, 64<<10)
	chunk := make([]byte, 127*512)
	for _, op := range p.ops {
		if op.copy {
			buf = buf[:0]
			for off, left := op.off, op.n; left > 0; {
				k := min(left, maxCopy)
				buf = copyInstr(buf, uint32(off), uint32(k))
				off += k
				left -= k
			}
			if _, err := w.Write(buf); err != nil {
				return err
			}
			continue
		}
		crc := uint32(0)
		for off, left := op.off, op.n; left > 0; {
			k := min(left, int64(len(chunk)))
			if _, err := f.ReadAt(chunk[:k], off); err != nil {
				return fmt.Errorf("read the changed bytes: %w", err)
			}
			crc = crc32.Update(crc, crc32.IEEETable, chunk[:k])
			buf = buf[:0]
			for i := int64(0); i < k; i += 127 {
				j := min(i+127, k)
				buf = append(buf, byte(j-i))
				buf = append(buf, chunk[i:j]...)
			}
			if _, err := w.Write(buf); err != nil {
				return err
			}
			off += k
			left -= k
		}
		if crc != op.crc {
			return errFileChanged
		}
	}
	return nil
}

// errFileChanged is a big file that changed between being read for the
// snapshot and being sent.
var errFileChanged = errors.New("a file changed while it was being sent")

// readSigFile loads a cached signature.
func readSigFile(path string) (*signature, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readSignature(f)
}
