package helper

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/git-relay/git-relay/internal/bundle"
	"github.com/git-relay/git-relay/internal/gitx"
)

// A push's payload carries a git bundle (v2): a header that names the
// bundle's heads and its prerequisites, then a pack. The helper writes
// the header itself and has git pack-objects write the pack, with the
// arguments and input `git bundle create` would give it. Without that
// git in between the pack starts sooner (bundle walks the history once
// to find its prerequisites before pack-objects walks it again), a source
// that is not a ref (HEAD, an id) needs no temporary ref, and a push of
// objects upstream has already shows itself in the pack's object count.
//
// The prerequisites are upstream's tips that this repository has: the
// pack is thin against them, as against git bundle's boundary commits,
// which are among their ancestors. The server checks that upstream has
// each one.

// bundleSpec is what a push bundles.
type bundleSpec struct {
	heads   []bundle.Ref // what the bundle brings, under the refs it goes to
	prereqs []string     // what it builds on, sorted
}

// bundleFor returns what to bundle for the updates, or nil when every new
// id is one of upstream's tips (a push that only moves refs, or deletes
// them).
func (h *Helper) bundleFor(ctx context.Context, ups []*refUpdate) (*bundleSpec, error) {
	upstreamIDs := map[string]bool{}
	for _, id := range h.refs.Refs {
		upstreamIDs[id] = true
	}
	b := &bundleSpec{}
	seen := map[bundle.Ref]bool{}
	for _, u := range ups {
		if u.New == zeroID || upstreamIDs[u.New] {
			// Deleted, or upstream has it already: the server checks
			// such ids against upstream.
			continue
		}
		hd := bundle.Ref{OID: u.New, Name: u.Ref}
		if !seen[hd] {
			seen[hd] = true
			b.heads = append(b.heads, hd)
		}
	}
	if len(b.heads) == 0 {
		return nil, nil
	}
	have := h.have
	if have == nil {
		ids := make([]string, 0, len(upstreamIDs))
		for id := range upstreamIDs {
			ids = append(ids, id)
		}
		var err error
		if have, err = h.git.Exists(ctx, ids); err != nil {
			return nil, err
		}
	}
	for id := range upstreamIDs {
		if have[id] != "" {
			b.prereqs = append(b.prereqs, id)
		}
	}
	slices.Sort(b.prereqs)
	return b, nil
}

// header is the bundle's header: what precedes its pack. It names as
// many prerequisites as a server reads; the pack builds on all of them,
// and upstream has them all.
func (b *bundleSpec) header() []byte {
	prereqs := b.prereqs[:min(len(b.prereqs), max(bundle.MaxEntries-len(b.heads), 0))]
	return bundle.AppendV2(nil, prereqs, b.heads)
}

// revs is pack-objects' input: the heads, and the prerequisites excluded.
func (b *bundleSpec) revs() string {
	var s strings.Builder
	for _, hd := range b.heads {
		s.WriteString(hd.OID + "\n")
	}
	for _, id := range b.prereqs {
		s.WriteString("^" + id + "\n")
	}
	return s.String()
}

// bundleRun is a bundle on its way out: the header, then the pack as git
// pack-objects writes it to a pipe.
type bundleRun struct {
	cmd  *gitx.Cmd
	pipe io.ReadCloser
	out  io.Reader
	done bool
}

// startBundle starts writing the bundle b. It waits for the pack's
// header (pack-objects writes it once it knows what goes in), and
// returns empty when the pack has no object: upstream has every one of
// them, and the push moves refs only.
func (h *Helper) startBundle(ctx context.Context, b *bundleSpec) (run *bundleRun, empty bool, err error) {
	h.ui.status("bundling...")
	p, err := h.takePacker(ctx)
	if err != nil {
		return nil, false, fmt.Errorf("create bundle: %w", err)
	}
	go func() {
		// pack-objects reads every rev before it writes: this ends.
		_, _ = io.WriteString(p.in, b.revs())
		p.in.Close()
	}()
	c, pipe := p.cmd, p.pipe
	run = &bundleRun{cmd: c, pipe: pipe}
	hdr := make([]byte, bundle.PackHeaderLen)
	if _, err := io.ReadFull(pipe, hdr); err != nil {
		pipe.Close()
		if werr := run.wait(); werr != nil {
			return nil, false, werr
		}
		return nil, false, fmt.Errorf("create bundle: git pack-objects wrote no pack: %w", err)
	}
	objects, err := bundle.PackObjects(hdr)
	if err != nil {
		run.stop()
		return nil, false, fmt.Errorf("create bundle: git pack-objects: %w", err)
	}
	if objects == 0 {
		_, _ = io.Copy(io.Discard, pipe)
		if err := run.wait(); err != nil {
			return nil, false, err
		}
		h.ui.detail("upstream has every object: updating refs only")
		return nil, true, nil
	}
	run.out = io.MultiReader(bytes.NewReader(b.header()), bytes.NewReader(hdr), pipe)
	return run, false, nil
}

// packer is a git pack-objects that waits for the revs of its pack.
type packer struct {
	cmd  *gitx.Cmd
	in   io.WriteCloser
	pipe io.ReadCloser
}

func (h *Helper) newPacker(ctx context.Context) (*packer, error) {
	c := h.git.Command(ctx, "pack-objects", "--revs", "--stdout", "--thin", "--delta-base-offset", "--quiet")
	in, err := c.StdinPipe()
	if err != nil {
		return nil, err
	}
	pipe, err := c.StdoutPipe()
	if err != nil {
		in.Close()
		return nil, err
	}
	if f, ok := pipe.(*os.File); ok {
		// git writes the pack in small pieces: a wide pipe wakes the
		// helper for a megabyte at a time rather than for each of them.
		gitx.WidenPipe(f)
	}
	if err := c.Start(); err != nil {
		return nil, err
	}
	return &packer{cmd: c, in: in, pipe: pipe}, nil
}

// startPacker starts, beside the listing for a push, the pack-objects
// that startBundle gives the revs to, unless it is started already:
// git's start-up is then off the push's way, as cat-file's is
// (startLookup). One that fails to start leaves startBundle to start its
// own.
func (h *Helper) startPacker(ctx context.Context) {
	h.packer.start(func() *packer {
		p, _ := h.newPacker(ctx)
		return p
	})
}

// takePacker returns the pack-objects startPacker started, or a new one.
func (h *Helper) takePacker(ctx context.Context) (*packer, error) {
	if p := h.packer.take(); p != nil {
		return p, nil
	}
	return h.newPacker(ctx)
}

// close ends a pack-objects that got no revs.
func (p *packer) close() {
	if p == nil {
		return
	}
	p.in.Close()
	p.pipe.Close()
	_ = p.cmd.Wait()
}

func (b *bundleRun) wait() error {
	if b.done {
		return nil
	}
	b.done = true
	if err := b.cmd.Wait(); err != nil {
		return fmt.Errorf("create bundle: %w", err)
	}
	return nil
}

// stop ends git early (a failed upload) and reaps it.
func (b *bundleRun) stop() {
	if !b.done {
		b.pipe.Close()
		_ = b.wait()
	}
}
