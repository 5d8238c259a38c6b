package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/git-relay/git-relay/internal/bundle"
	"github.com/git-relay/git-relay/internal/keyring"
	"github.com/git-relay/git-relay/internal/payload"
	"github.com/git-relay/git-relay/internal/upstream"
	"github.com/git-relay/git-relay/internal/wire"
)

// startApply runs a push session's processing in the background, once.
func (s *Server) startApply(id string) {
	s.mu.Lock()
	if _, ok := s.running[id]; ok {
		s.mu.Unlock()
		return
	}
	select {
	case <-s.closing:
		// Shutting down: the session stays parked on disk in its phase and
		// is resumed by the next run.
		s.mu.Unlock()
		return
	default:
	}
	done := make(chan struct{})
	s.running[id] = done
	s.work.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.work.Done()
		var once sync.Once
		answered := func() {
			once.Do(func() {
				s.mu.Lock()
				delete(s.running, id)
				s.mu.Unlock()
				close(done)
			})
		}
		defer answered()
		s.apply(id, answered)
	}()
}

// waitApply waits until the session's processing ends or d passes, so that
// a small push is answered in the same round trip that completes it.
func (s *Server) waitApply(ctx context.Context, id string, d time.Duration) {
	s.mu.Lock()
	done, ok := s.running[id]
	s.mu.Unlock()
	if !ok {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	case <-ctx.Done():
	}
}

// resume restarts the sessions a previous run left half-applied. The push
// upstream is a compare-and-swap on the ids the client saw, and a ref
// already at its new id counts as done, so running a session again can
// never apply it twice.
func (s *Server) resume() {
	entries, _ := os.ReadDir(filepath.Join(s.cfg.DataDir, "sessions"))
	for _, e := range entries {
		ps, err := s.readPush(e.Name())
		if err != nil {
			continue
		}
		if ps.state.Phase == wire.PhaseProcessing || ps.state.Phase == wire.PhasePushing {
			s.log.Info("resuming push", "session", ps.id, "phase", ps.state.Phase)
			s.startApply(ps.id)
		}
	}
}

// apply processes a session and calls answered once its outcome is saved,
// before the mirror catches up, so that waiting clients get their answer
// without waiting for work they don't need.
func (s *Server) apply(id string, answered func()) {
	ctx := context.Background()
	ps, err := s.readPush(id)
	if err != nil {
		s.log.Error("apply", "session", id, "err", err)
		return
	}
	key, ok := s.cfg.Ring.Lookup(ps.state.KeyID)
	if !ok {
		ps.enter(wire.PhaseFailed)
		ps.state.Message = "the key that started this push is no longer configured"
		_ = ps.save()
		return
	}
	unlock := s.repoLocks.lock(ps.manifest.Repo)
	defer unlock()
	s.log.Info("push phase", "session", id, "repo", ps.manifest.Repo, "phase", ps.state.Phase)
	start := time.Now()
	results, err := s.applyPush(ctx, ps, key)
	if err != nil {
		ps.enter(wire.PhaseFailed)
		ps.state.Message = s.redactor(err.Error())
		s.log.Warn("push failed", "session", id, "repo", ps.manifest.Repo, "err", ps.state.Message)
	} else {
		ps.enter(wire.PhaseDone)
		ps.state.Results = results
		s.log.Info("push done", "session", id, "repo", ps.manifest.Repo, "took", time.Since(start).Round(time.Millisecond), "refs", summarize(results))
	}
	if err := ps.save(); err != nil {
		s.log.Error("save session", "session", id, "err", err)
	}
	answered()
	// The client has its answer; now bring the mirror up to date from the
	// bundle we hold, which is cheaper than fetching it back from upstream.
	if bundle := filepath.Join(ps.dir, "bundle"); ps.state.Phase == wire.PhaseDone && fileExists(bundle) {
		if h, err := s.openRepo(ps.manifest.Repo); err == nil {
			if err := s.indexIntoMirror(ctx, h, bundle); err != nil {
				s.log.Warn("update mirror", "repo", ps.manifest.Repo, "err", err)
			}
			for _, r := range ps.state.Results {
				u := updateFor(ps.manifest.Updates, r.Ref)
				if !r.OK {
					continue
				}
				if u.New == zeroID {
					_, _ = h.mirror.Run(ctx, "update-ref", "-d", u.Ref)
				} else {
					_, _ = h.mirror.Run(ctx, "update-ref", u.Ref, u.New)
				}
			}
		}
	}
	// The chunks and the assembled bundle are not needed any more; the
	// state stays for status queries until the janitor removes it.
	os.RemoveAll(filepath.Join(ps.dir, "chunks"))
	os.Remove(filepath.Join(ps.dir, "bundle"))
	s.takePartHash(ps.id)
	os.Remove(ps.partPath())
}

// applyPush does the work and returns the per-ref results.
func (s *Server) applyPush(ctx context.Context, ps *pushSession, key keyring.Key) ([]wire.RefResult, error) {
	m := ps.manifest
	tStart := time.Now()
	h, err := s.openRepo(m.Repo)
	if err != nil {
		return nil, err
	}
	refs, err := s.list(ctx, h)
	if err != nil {
		return nil, err
	}

	results := make(map[string]*wire.RefResult, len(m.Updates))
	var pending []wire.Update
	for _, u := range m.Updates {
		r := &wire.RefResult{Ref: u.Ref}
		results[u.Ref] = r
		cur := refs.Refs[u.Ref]
		if cur == "" {
			cur = zeroID
		}
		switch {
		case cur == u.New:
			// Already there: upstream got it from us before a restart, or
			// from someone else. Either way the ref is as asked.
			r.OK = true
		case cur != u.Old:
			r.Reason = "fetch first"
		case u.New == zeroID && u.Ref == refs.Head:
			r.Reason = "refusing to delete the default branch"
		case strings.HasPrefix(u.Ref, "refs/tags/") && u.Old != zeroID && !u.Force:
			r.Reason = "already exists"
		default:
			pending = append(pending, u)
		}
	}
	if failAtomic(m.Atomic, results) {
		return ordered(m.Updates, results), nil
	}

	var bundlePath string
	if t := ps.state.Totals; t != nil && t.Chunks > 0 {
		bundlePath = filepath.Join(ps.dir, "bundle")
		if err := s.assemble(ps, key, bundlePath); err != nil {
			return nil, err
		}
	}
	tAssembled := time.Now()
	if err := s.refresh(ctx, h, refs); err != nil {
		return nil, err
	}
	if bundlePath != "" {
		if err := s.checkBundleHeader(ctx, h, ps, bundlePath); err != nil {
			return nil, err
		}
	} else if s.checkRefs(ctx, h, pending, results); failAtomic(m.Atomic, results) {
		return ordered(m.Updates, results), nil
	}
	todo := stillPending(pending, results)
	if len(todo) == 0 {
		return ordered(m.Updates, results), nil
	}

	ps.enter(wire.PhasePushing)
	s.log.Info("push phase", "session", ps.id, "repo", m.Repo, "phase", wire.PhasePushing)
	if err := ps.save(); err != nil {
		return nil, err
	}
	tChecked := time.Now()
	res, err := s.pushUpstream(ctx, h, ps, bundlePath, todo)
	s.log.Debug("push timings", "session", ps.id, "assemble", tAssembled.Sub(tStart), "refresh+verify", tChecked.Sub(tAssembled), "push", time.Since(tChecked))
	if err != nil {
		return nil, err
	}
	var moved []string
	for _, u := range todo {
		r := results[u.Ref]
		reason, found := res.Refs[u.Ref]
		if found && reason == "" {
			r.OK = true
			continue
		}
		if !found {
			reason = "no status from upstream"
			if res.UnpackError != "" {
				reason = "upstream could not unpack: " + res.UnpackError
			}
		}
		r.Reason = reason
		moved = append(moved, u.Ref)
	}
	if len(moved) > 0 {
		// A compare-and-swap that lost a race reads as a lock failure
		// upstream; tell the user in git's words that upstream moved.
		if now, err := h.remote.List(ctx); err == nil {
			for _, ref := range moved {
				u := updateFor(m.Updates, ref)
				cur := now.Refs[ref]
				if cur == "" {
					cur = zeroID
				}
				if cur != u.Old && cur != u.New {
					results[ref].Reason = "fetch first"
				}
			}
		}
	}
	return ordered(m.Updates, results), nil
}

func updateFor(us []wire.Update, ref string) wire.Update {
	for _, u := range us {
		if u.Ref == ref {
			return u
		}
	}
	return wire.Update{}
}

// failAtomic turns every ref into a failure when one failed in an atomic
// push, and says whether it did.
func failAtomic(atomic bool, results map[string]*wire.RefResult) bool {
	if !atomic {
		return false
	}
	failed := false
	for _, r := range results {
		if !r.OK && r.Reason != "" {
			failed = true
		}
	}
	if failed {
		for _, r := range results {
			if r.Reason == "" {
				r.OK = false
				r.Reason = "atomic push failed"
			}
		}
	}
	return failed
}

func ordered(us []wire.Update, results map[string]*wire.RefResult) []wire.RefResult {
	out := make([]wire.RefResult, 0, len(us))
	for _, u := range us {
		out = append(out, *results[u.Ref])
	}
	return out
}

// assemble authenticates every chunk in order, decrypts and decompresses
// them into the bundle file, and checks the bundle's size and hash against
// the signed manifest. Nothing reads the bundle before all of it
// authenticated (the final chunk included).
func (s *Server) assemble(ps *pushSession, key keyring.Key, out string) error {
	// Fast path: every chunk's plaintext was written when it arrived and
	// authenticated; if the whole matches the signed sizes and hash, it is
	// the payload (decompressed into out when it was compressed).
	// Otherwise (a crash between a chunk and its plaintext) decrypt the
	// chunks again.
	t := ps.state.Totals
	part := ps.partPath()
	defer os.Remove(part)
	if h := s.takePartHash(ps.id); h != nil && t.Compression == wire.CompressNone && h.Matches(t.Chunks, t.BundleSize, t.BundleHash) {
		return os.Rename(part, out)
	}
	if p, err := payload.Finish(part, t.Compression, t.PayloadSize, t.BundleSize, t.BundleHash, out); err == nil {
		if p == part {
			return os.Rename(part, out)
		}
		return nil
	}
	st, err := ps.stream(key)
	if err != nil {
		return err
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	get := func(i uint32) ([]byte, error) { return os.ReadFile(ps.chunkPath(i)) }
	// No fsync: after a crash the bundle is assembled again from the
	// chunks, which are durable.
	return payload.Assemble(st, get, t.Chunks, t.Compression, t.BundleSize, t.BundleHash, f)
}

// checkBundleHeader verifies the bundle against the signed manifest and
// the mirror: its heads must be the manifest's new ids, and its
// prerequisites must be in upstream.
func (s *Server) checkBundleHeader(ctx context.Context, h *repoHandle, ps *pushSession, path string) error {
	hdr, pack, err := bundle.OpenPack(path)
	if err != nil {
		return fmt.Errorf("read bundle: %w", err)
	}
	pack.Close()
	// Every head of the bundle is a new id of the signed manifest, and every
	// new id the bundle does not carry is one upstream already has.
	news := map[string]bool{}
	for _, u := range ps.manifest.Updates {
		if u.New != zeroID {
			news[u.New] = true
		}
	}
	heads := map[string]bool{}
	for _, r := range hdr.Refs {
		if !news[r.OID] {
			return errors.New("the bundle's heads do not match the signed manifest")
		}
		heads[r.OID] = true
	}
	for id := range news {
		if !heads[id] {
			if ok, _ := h.mirror.Ok(ctx, "cat-file", "-e", id); !ok {
				return fmt.Errorf("the bundle does not carry %s, and upstream does not have it", id)
			}
		}
	}
	if _, err := h.mirror.Run(ctx, "bundle", "verify", "-q", path); err != nil {
		return fmt.Errorf("bundle verify: %w (upstream may lack its prerequisites: fetch and push again)", err)
	}
	return nil
}

// checkRefs checks what needs the objects: every new id is present, and a
// branch moves by fast-forward unless the push is forced. The mirror must
// hold the objects.
func (s *Server) checkRefs(ctx context.Context, h *repoHandle, ups []wire.Update, results map[string]*wire.RefResult) {
	for _, u := range ups {
		r := results[u.Ref]
		if u.New == zeroID {
			continue
		}
		if ok, _ := h.mirror.Ok(ctx, "cat-file", "-e", u.New); !ok {
			r.Reason = "missing objects (the bundle does not carry " + u.New + ")"
			continue
		}
		if u.Old != zeroID && !u.Force && strings.HasPrefix(u.Ref, "refs/heads/") {
			if ok, _ := h.mirror.Ok(ctx, "merge-base", "--is-ancestor", u.Old, u.New); !ok {
				r.Reason = "non-fast forward"
			}
		}
	}
}

func stillPending(ups []wire.Update, results map[string]*wire.RefResult) []wire.Update {
	var out []wire.Update
	for _, u := range ups {
		if r := results[u.Ref]; !r.OK && r.Reason == "" {
			out = append(out, u)
		}
	}
	return out
}

// pushUpstream sends the updates and the bundle's pack to upstream's
// receive-pack. The pack goes straight from the bundle file: no unpacking,
// no repacking, because it already holds exactly what upstream lacks (its
// prerequisites are upstream's tips). Upstream's own index-pack, fsck and
// connectivity check stand guard over the objects, and the old ids in the
// commands make every update a compare-and-swap.
func (s *Server) pushUpstream(ctx context.Context, h *repoHandle, ps *pushSession, bundlePath string, todo []wire.Update) (*upstream.PushResult, error) {
	req := upstream.PushRequest{Atomic: ps.manifest.Atomic, Options: ps.manifest.Options}
	needPack := false
	for _, u := range todo {
		req.Updates = append(req.Updates, upstream.Update{Ref: u.Ref, Old: u.Old, New: u.New})
		if u.New != zeroID {
			needPack = true
		}
	}
	if needPack && bundlePath == "" {
		req.Pack = bytes.NewReader(bundle.EmptyPack())
	} else if needPack {
		_, pack, err := bundle.OpenPack(bundlePath)
		if err != nil {
			return nil, err
		}
		defer pack.Close()
		req.Pack = pack
	}
	res, err := h.remote.Push(ctx, req)
	if err != nil && res == nil {
		return nil, s.upstreamErr(h, err)
	}
	return res, nil
}

// indexIntoMirror indexes the bundle's pack into the mirror with full
// object checks, completing the thin pack from the mirror's objects.
func (s *Server) indexIntoMirror(ctx context.Context, h *repoHandle, bundlePath string) error {
	_, pack, err := bundle.OpenPack(bundlePath)
	if err != nil {
		return err
	}
	defer pack.Close()
	// One thread at idle priority: this runs after the client has its
	// answer, and must not slow whatever the machine does next.
	c := h.mirror.Command(ctx, "index-pack", "--stdin", "--fix-thin", "--strict", "--threads=1")
	c.Background = true
	c.Stdin = pack
	c.Stdout = io.Discard
	if err := c.Run(); err != nil {
		return fmt.Errorf("check objects: %w", err)
	}
	return nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// summarize says in a few words what happened to each ref, for the log.
func summarize(results []wire.RefResult) string {
	parts := make([]string, 0, len(results))
	for _, r := range results {
		if r.OK {
			parts = append(parts, r.Ref+" ok")
		} else {
			parts = append(parts, r.Ref+" refused ("+r.Reason+")")
		}
	}
	return strings.Join(parts, ", ")
}
