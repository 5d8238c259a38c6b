package sidecar

import (
	"bufio"
	"compress/zlib"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// A sync sends the workspace a pack of the objects it lacks: the new
// snapshot's trees and blobs that are not in the tree it holds (nor in its
// baseline commit). Small objects are read from git and sent whole; a big
// file travels as a git delta against its previous version when its
// signature is known (a one-byte edit sends a few bytes), else whole,
// from the file. A deleted file sends nothing at all: only the trees that
// no longer name it.
//
// The pack is written here rather than by pack-objects because big blobs
// are in no object store (see snapshotter.bigFile), and because git's own
// delta search would hold several times a big file's size in memory.

// outgoing is what one sync sends.
type outgoing struct {
	small []string // ids of objects read from git
	big   []bigOut
	// how the workspace should store the pack: "none" (nothing to
	// send), "unpack" (loose objects), "unpack0" (loose objects written
	// uncompressed: big results of deltas), "index" (kept as a pack).
	how string
	// needKiB is the room the objects and their files take in the
	// workspace, for its free-space check.
	needKiB int64
	// files counts the paths that differ from the tree the workspace
	// holds.
	files int
}

// bigOut is one big blob to send, from a file in the work tree.
type bigOut struct {
	id   string
	path string // absolute
	size int64
	plan *deltaPlan // nil: whole
}

// plan lists what the workspace lacks of tree, given trees it holds.
// Trees that turn out to be unknown here are left out of the exclusions:
// the pack then only carries more than needed.
func (s *snapshotter) plan(ctx context.Context, sn *snapshot, have []string, haveBig map[string]bool) (*outgoing, error) {
	g := s.git(s.indexPath())
	var known []string
	for _, h := range have {
		if h != "" {
			known = append(known, h)
		}
	}
	if len(known) == 1 {
		// From one tree the workspace holds, the new objects are what
		// one diff-tree names: the changed blobs and trees.
		if ids, files, err := s.changedObjects(ctx, known[0], sn.tree); err == nil {
			return s.outgoing(sn, ids, files, haveBig)
		}
	}
	// How many paths differ, for the summary, counted meanwhile.
	files := make(chan int, 1)
	from := ""
	if len(known) > 0 {
		from = known[0]
	}
	go func() {
		names, err := "", errors.New("no tree to compare with")
		if from != "" {
			names, err = g.Run(ctx, "diff-tree", "-r", "-z", "--name-only", "--no-renames", from, sn.tree)
		}
		if err != nil {
			names, _ = g.Run(ctx, "ls-tree", "-r", "-z", "--name-only", sn.tree)
		}
		files <- strings.Count(names, "\x00")
	}()
	revList := func() (string, error) {
		args := []string{"rev-list", "--objects", "--missing=print", sn.tree}
		if len(known) > 0 {
			args = append(append(args, "--not"), known...)
		}
		return g.Run(ctx, args...)
	}
	list, err := revList()
	if err != nil && len(known) > 0 {
		// Usually every tree is here; when one is not, keep those
		// that are.
		var ok []string
		for _, h := range known {
			if yes, _ := g.Ok(ctx, "cat-file", "-e", h+"^{tree}"); yes {
				ok = append(ok, h)
			}
		}
		known = ok
		list, err = revList()
	}
	nfiles := <-files
	if err != nil {
		return nil, fmt.Errorf("list the objects to send: %w", err)
	}
	var ids []string
	for _, line := range strings.Split(list, "\n") {
		if id, _, _ := strings.Cut(strings.TrimPrefix(line, "?"), " "); id != "" {
			ids = append(ids, id)
		}
	}
	return s.outgoing(sn, ids, nfiles, haveBig)
}

// changedObjects lists the objects of tree that from does not have, as
// diff-tree sees them (a blob moved from elsewhere in from is sent again;
// that only costs its size), and counts the paths that differ.
func (s *snapshotter) changedObjects(ctx context.Context, from, tree string) ([]string, int, error) {
	if from == tree {
		return nil, 0, nil
	}
	out, err := s.git(s.indexPath()).Run(ctx, "diff-tree", "-r", "-t", "-z", "--no-renames", "--raw", "--no-abbrev", from, tree)
	if err != nil {
		return nil, 0, err
	}
	ids := []string{tree}
	files := 0
	// Records are ":<old mode> <new mode> <old id> <new id> <status>"
	// then the path, NUL-separated.
	recs := strings.Split(out, "\x00")
	for i := 0; i+1 < len(recs); i += 2 {
		f := strings.Fields(strings.TrimPrefix(recs[i], ":"))
		if len(f) != 5 {
			return nil, 0, fmt.Errorf("unexpected diff-tree output %q", recs[i])
		}
		if f[1] != "040000" {
			files++
		}
		if f[4] != "D" && f[1] != "160000" {
			ids = append(ids, f[3])
		}
	}
	return ids, files, nil
}

// outgoing sorts the objects to send into those git reads and the big
// files, and decides how the workspace stores them.
func (s *snapshotter) outgoing(sn *snapshot, ids []string, files int, haveBig map[string]bool) (*outgoing, error) {
	out := &outgoing{files: files}
	byID := sn.bigByID()
	seen := make(map[string]bool, len(ids))
	for _, id := range ids {
		if seen[id] {
			continue
		}
		seen[id] = true
		if p, ok := byID[id]; ok {
			b := bigOut{id: id, path: filepath.Join(s.r.top, p), size: sn.big[p].Size}
			// Only a base the workspace holds can serve.
			if pl := sn.plans[id]; pl != nil && haveBig[pl.baseID] {
				b.plan = pl
			}
			out.big = append(out.big, b)
			out.needKiB += 2 * b.size >> 10
			continue
		}
		out.small = append(out.small, id)
	}
	deltas, huge := false, false
	for _, b := range out.big {
		deltas = deltas || b.plan != nil
		huge = huge || b.size > maxDeltaFile
	}
	n := len(out.small) + len(out.big)
	switch {
	case n == 0:
		out.how = "none"
	case deltas || (len(out.big) > 0 && !huge):
		// Big objects as loose, uncompressed objects: one hash, no
		// pack checksum, no fsync. index-pack would complete a thin
		// pack by appending each base, recompressing a big file for a
		// one-byte change.
		out.how = "unpack0"
	case huge || n >= 100:
		// index-pack streams objects of any size on every git; older
		// gits' unpack-objects holds each object in memory.
		out.how = "index"
	default:
		out.how = "unpack"
	}
	return out, nil
}

// packWriter writes a pack stream and its trailing checksum.
type packWriter struct {
	w   *bufio.Writer
	sum hash.Hash
	// z holds one compressor per level: a new one costs some hundred
	// KiB of tables, too much to pay per object.
	z map[int]*zlib.Writer
}

func (p *packWriter) Write(b []byte) (int, error) {
	p.sum.Write(b)
	return p.w.Write(b)
}

// objHeader writes a pack entry header: type and size.
func (p *packWriter) objHeader(typ int, size int64) error {
	var b [16]byte
	c := byte(typ<<4) | byte(size&0x0f)
	size >>= 4
	i := 0
	for size > 0 {
		b[i] = c | 0x80
		i++
		c = byte(size & 0x7f)
		size >>= 7
	}
	b[i] = c
	_, err := p.Write(b[:i+1])
	return err
}

// deflate compresses what fn writes into the pack at level.
func (p *packWriter) deflate(level int, fn func(w io.Writer) error) error {
	z := p.z[level]
	if z == nil {
		var err error
		if z, err = zlib.NewWriterLevel(p, level); err != nil {
			return err
		}
		if p.z == nil {
			p.z = map[int]*zlib.Writer{}
		}
		p.z[level] = z
	} else {
		z.Reset(p)
	}
	if err := fn(z); err != nil {
		return err
	}
	return z.Close()
}

var objTypes = map[string]int{"commit": 1, "tree": 2, "blob": 3, "tag": 4}

const refDelta = 7

// writePack writes the pack of o to w. A big file that changed since it
// was read makes it fail with errFileChanged before the pack is complete,
// so the workspace never takes it.
func (s *snapshotter) writePack(ctx context.Context, w io.Writer, o *outgoing) error {
	pw := &packWriter{w: bufio.NewWriterSize(w, 256<<10), sum: s.format.newHash()}
	var hdr [12]byte
	copy(hdr[:], "PACK")
	binary.BigEndian.PutUint32(hdr[4:], 2)
	binary.BigEndian.PutUint32(hdr[8:], uint32(len(o.small)+len(o.big)))
	if _, err := pw.Write(hdr[:]); err != nil {
		return err
	}
	if len(o.small) > 0 {
		if err := s.writeSmall(ctx, pw, o.small); err != nil {
			return err
		}
	}
	for _, b := range o.big {
		if err := s.writeBig(pw, b); err != nil {
			return err
		}
	}
	if _, err := pw.w.Write(pw.sum.Sum(nil)); err != nil {
		return err
	}
	return pw.w.Flush()
}

// writeSmall sends objects read from git's store with one cat-file.
func (s *snapshotter) writeSmall(ctx context.Context, pw *packWriter, ids []string) error {
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := s.git(s.indexPath()).Command(cctx, "cat-file", "--batch")
	pr, pwr := io.Pipe()
	cmd.Stdin = pr // before StdoutPipe, which builds the command
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("read the objects to send: %w", err)
	}
	go func() {
		bw := bufio.NewWriter(pwr)
		for _, id := range ids {
			bw.WriteString(id + "\n")
		}
		pwr.CloseWithError(bw.Flush())
	}()
	br := bufio.NewReaderSize(stdout, 256<<10)
	werr := func() error {
		for _, id := range ids {
			line, err := br.ReadString('\n')
			if err != nil {
				return fmt.Errorf("read object %s: %w", id, err)
			}
			f := strings.Fields(line)
			if len(f) != 3 || f[0] != id {
				return fmt.Errorf("read object %s: git answered %q", id, strings.TrimSpace(line))
			}
			typ, ok := objTypes[f[1]]
			size, err := strconv.ParseInt(f[2], 10, 64)
			if !ok || err != nil {
				return fmt.Errorf("read object %s: git answered %q", id, strings.TrimSpace(line))
			}
			if err := pw.objHeader(typ, size); err != nil {
				return err
			}
			if err := pw.deflate(zlib.BestSpeed, func(z io.Writer) error {
				_, err := io.CopyN(z, br, size)
				return err
			}); err != nil {
				return fmt.Errorf("send object %s: %w", id, err)
			}
			if _, err := br.Discard(1); err != nil { // the newline after the content
				return fmt.Errorf("read object %s: %w", id, err)
			}
		}
		return nil
	}()
	if werr != nil {
		cancel()
	}
	pr.Close()
	if err := cmd.Wait(); err != nil && werr == nil {
		werr = fmt.Errorf("read the objects to send: %w", err)
	}
	return werr
}

// writeBig sends one big blob: as a delta against the version the
// workspace holds, or whole from the file, checking on the way that the
// file still has the content the snapshot recorded.
func (s *snapshotter) writeBig(pw *packWriter, b bigOut) error {
	f, err := os.Open(b.path)
	if err != nil {
		return fmt.Errorf("send %s: %w", b.path, err)
	}
	defer f.Close()
	if b.plan != nil {
		base, err := hex.DecodeString(b.plan.baseID)
		if err != nil {
			return err
		}
		if err := pw.objHeader(refDelta, b.plan.encodedLen()); err != nil {
			return err
		}
		if _, err := pw.Write(base); err != nil {
			return err
		}
		return pw.deflate(zlib.BestSpeed, func(z io.Writer) error { return b.plan.writeDelta(z, f) })
	}
	if err := pw.objHeader(objTypes["blob"], b.size); err != nil {
		return err
	}
	// Most big files are already compressed (archives, images, builds):
	// deflating them again costs time and saves nothing. A sample
	// decides.
	level := zlib.NoCompression
	if compressible(f) {
		level = zlib.BestSpeed
	}
	h := s.format.newHash()
	fmt.Fprintf(h, "blob %d\x00", b.size)
	err = pw.deflate(level, func(z io.Writer) error {
		n, err := io.CopyBuffer(io.MultiWriter(z, h), io.NewSectionReader(f, 0, b.size), make([]byte, 1<<20))
		if err != nil {
			return err
		}
		if n != b.size {
			return errFileChanged
		}
		return nil
	})
	if err != nil {
		return err
	}
	if fmt.Sprintf("%x", h.Sum(nil)) != b.id {
		return errFileChanged
	}
	return nil
}

// compressible deflates a sample from the middle of f and says whether it
// shrank by a tenth or more.
func compressible(f *os.File) bool {
	fi, err := f.Stat()
	if err != nil {
		return true
	}
	sample := make([]byte, 128<<10)
	n, _ := f.ReadAt(sample, fi.Size()/2)
	if n == 0 {
		return true
	}
	var c countWriter
	z, _ := zlib.NewWriterLevel(&c, zlib.BestSpeed)
	z.Write(sample[:n])
	z.Close()
	return c.n < int64(n)*9/10
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}
