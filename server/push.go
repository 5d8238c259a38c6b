package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/git-relay/git-relay/internal/bundle"
	"github.com/git-relay/git-relay/internal/gitx"
	"github.com/git-relay/git-relay/internal/payload"
	"github.com/git-relay/git-relay/internal/upstream"
	"github.com/git-relay/git-relay/internal/wire"
)

// A push is cut through: the server streams the authenticated chunks, in
// order, into upstream's receive-pack while later chunks are still on
// their way, and a tee indexes the same bytes into a quarantine of the
// mirror. Upstream cannot complete the pack without its last bytes, and
// those are held back until
//
//   - every chunk, the final one included, has authenticated and the
//     plaintext matches the size and SHA-256 its sender vouched for
//     (payload.Reader holds them back), and
//   - the server's own policy checks have passed: the bundle's heads are
//     the manifest's new ids, its prerequisites are upstream's, and a
//     branch moves by fast-forward unless this relay allows force and the
//     client asked for it, checked in the quarantine against the objects
//     themselves, whatever the client claims.
//
// On any failure the connection to upstream is cut before those bytes go:
// upstream's index-pack fails, its quarantine is dropped, and no ref
// moves. Every update is a compare-and-swap on the old id the client saw,
// so a push that runs again (after a crash, on another instance) never
// lands twice.

// maxManifest bounds the push manifest (a million refs fit).
const maxManifest = 256 << 20

// runPush runs a push to its end and records the outcome.
func (s *Server) runPush(ctx context.Context, e *exch) {
	start := time.Now()
	results, err := s.push(ctx, e)
	for attempt := 1; attempt < 3 && errors.Is(err, errUpstreamLost); attempt++ {
		// Upstream went away while the pack streamed to it, before its
		// end was sent: nothing landed. The chunks are kept, so the
		// push starts over from them.
		s.log.Warn("the connection to upstream broke before the pack was complete: pushing again from the kept chunks", "id", e.id, "err", s.redact(err.Error()))
		results, err = s.push(ctx, e)
	}
	switch {
	case errors.Is(err, errEnded):
		return // cancelled
	case err != nil && s.stopping.Load():
		return // shutting down: it resumes from the kept chunks
	}
	if err != nil {
		s.log.Warn("push failed", "id", e.id, "err", s.redact(err.Error()))
	} else {
		s.log.Info("push done", "id", e.id, "took", time.Since(start).Round(time.Millisecond), "refs", summarize(results))
	}
	bg := context.WithoutCancel(ctx)
	// Marked before the outcome is known, so that an instance that learns
	// of it finds the pack (see follow).
	keep := err == nil && allLanded(results) && s.markSeed(bg, e)
	s.finish(bg, e, results, err)
	s.metrics.phase.WithLabelValues("push").Observe(time.Since(start).Seconds())
	if !keep {
		s.dropChunksAfter(bg, e)
	}
	// Otherwise the chunks stay for the other instances' mirrors (seedKeep).
}

// dropChunksAfter drops a push's chunks once the mirror has read its pack
// from them (admitLater).
func (s *Server) dropChunksAfter(ctx context.Context, e *exch) {
	e.mu.Lock()
	admitted := e.admitted
	e.mu.Unlock()
	if admitted == nil {
		s.dropChunks(ctx, e.id)
		return
	}
	s.bgWork.Add(1)
	go func() {
		defer s.bgWork.Done()
		<-admitted
		s.dropChunks(ctx, e.id)
	}()
}

func allLanded(results []wire.RefResult) bool {
	for _, r := range results {
		if !r.OK {
			return false
		}
	}
	return len(results) > 0
}

// pushPlan is a push once its manifest is read and checked.
type pushPlan struct {
	m       *mirror
	pre     *upstream.Prepared // the push to upstream, begun
	man     wire.PushManifest
	refs    *upstream.Refs
	results map[string]*wire.RefResult
	todo    []wire.Update // what goes upstream
	// ancestry lists the non-forced moves of existing branches whose new
	// id the pack carries: checked in the quarantine before the pack may
	// complete.
	ancestry []wire.Update
}

func (s *Server) push(ctx context.Context, e *exch) ([]wire.RefResult, error) {
	m, err := s.mirrors.get(e.open.Repo)
	if err != nil {
		return nil, err
	}
	// Upstream's refs and the mirror are brought up to date while the
	// first chunks come.
	type listing struct {
		refs *upstream.Refs
		err  error
	}
	// The listing the helper asked for a moment ago serves (pushListAge):
	// if upstream moved since, the push to upstream, a compare-and-swap on
	// the old ids, refuses it as it would a race. A manifest that disagrees
	// with that listing makes it list again before judging.
	listed := make(chan listing, 1)
	refreshed := make(chan struct{})
	go func() {
		defer close(refreshed)
		refs, err := s.refresh(ctx, m, time.Now().Add(-pushListAge))
		listed <- listing{refs, err}
	}()
	// A push that ends early (cancelled, a bad payload) still waits for
	// the refresh, which may be creating the mirror: nothing of it runs
	// on after the push, or after the server has stopped.
	defer func() { <-refreshed }()
	// So does the conversation with upstream's receive-pack, which the
	// pack then goes to the moment the checks pass; it began at the push's
	// listing when this instance made it (parked.go).
	pre, unpark := s.takeParked(ctx, m, e.key.ID)
	if pre == nil {
		pre, unpark = m.remote.Prepare(ctx), func() {}
	}
	defer unpark()
	defer pre.Close()
	br, man, done, err := s.pushPayload(ctx, e)
	defer done()
	if err != nil {
		return nil, err
	}
	if err := s.checkManifest(&man); err != nil {
		return nil, err
	}
	l := <-listed
	if l.err == nil && !agrees(man.Updates, l.refs) {
		l.refs, l.err = s.refresh(ctx, m, time.Now())
	}
	if l.err != nil {
		return nil, l.err
	}
	if err := s.enter(ctx, e, wire.PhaseProcessing); err != nil {
		return nil, err
	}
	p := &pushPlan{m: m, pre: pre, man: man, refs: l.refs, results: map[string]*wire.RefResult{}}
	s.plan(p)
	m.rw.RLock()
	locked := true
	defer func() {
		if locked {
			m.rw.RUnlock()
		}
	}()

	_, peekErr := br.Peek(1)
	hasBundle := peekErr == nil
	var hdr *bundle.Header
	var pack io.Reader
	if hasBundle {
		if hdr, pack, err = bundle.Split(br); err != nil {
			return nil, badRequest("read the bundle: %v", err)
		}
		if err := s.checkBundle(ctx, p, hdr); err != nil {
			return nil, err
		}
	} else if peekErr != io.EOF {
		return nil, peekErr
	} else if err := s.checkRefOnly(ctx, p); err != nil {
		return nil, err
	}
	if failAtomic(man.Atomic, p.results) {
		return ordered(man.Updates, p.results), nil
	}
	p.todo = stillPending(man.Updates, p.results)
	if len(p.todo) == 0 {
		return ordered(man.Updates, p.results), nil
	}
	if err := s.enter(ctx, e, wire.PhasePushing); err != nil {
		return nil, err
	}
	defer func() {
		e.mu.Lock()
		e.applying = false
		e.mu.Unlock()
	}()
	res, g, err := s.sendUpstream(ctx, e, p, pack)
	if err != nil {
		if g != nil {
			g.close()
		}
		return nil, err
	}
	s.record(ctx, p, res)
	m.rw.RUnlock()
	locked = false
	if allOK(p.results) {
		// The mirror follows upstream, after the client has its answer.
		s.admitLater(p, g)
	} else if g != nil {
		g.close()
	}
	m.forgetRefs() // upstream moved: the next use lists it again
	return ordered(man.Updates, p.results), nil
}

// admitLater brings what a push landed into the mirror in the
// background, once upstream has accepted it and the client has its
// answer: the pushed pack, and the refs as upstream moved them, so that
// the next listing needs no fetch. The pack of a push whose policy needs
// no object in the quarantine (creations, deletions, moves whose ids
// upstream had, moves packAncestry settled) is not indexed on the way:
// it is read again from the push's chunks and indexed here at the lowest
// CPU priority. Indexing it on the way, or keeping a copy of it, would
// add to the server's work while the user waits, since upstream indexes
// the same pack at the same time. Until the mirror is up to date, a
// refresh waits for it rather than fetching the same objects from
// upstream; the push's chunks are dropped after it (dropChunksAfter).
func (s *Server) admitLater(p *pushPlan, g *gate) {
	m := p.m
	m.admitting.add()
	done := make(chan struct{})
	if g != nil && g.later {
		g.e.mu.Lock()
		g.e.admitted = done
		g.e.mu.Unlock()
	}
	s.bgWork.Add(1)
	go func() {
		defer s.bgWork.Done()
		defer close(done)
		defer m.admitting.done()
		if g != nil {
			defer g.close()
		}
		start := time.Now()
		m.rw.RLock()
		err := s.admitPush(s.ctx, p, g)
		m.rw.RUnlock()
		if err != nil {
			if s.ctx.Err() == nil {
				s.log.Warn("update the mirror", "repo", m.name, "err", err)
			}
			return
		}
		s.log.Debug("push admitted to the mirror", "repo", m.name, "took", time.Since(start).Round(time.Millisecond))
		if g != nil {
			s.bitmapLater(m)
		}
	}()
}

// pushPayload reads a push's payload from its chunks, as they come and
// authenticate, up to the end of its manifest; br holds the rest (the
// bundle, if any). done releases it, whatever the error.
func (s *Server) pushPayload(ctx context.Context, e *exch) (br *bufio.Reader, man wire.PushManifest, done func(), err error) {
	next, release := s.upChunks(ctx, e)
	r := payload.NewReader(next, s.cfg.MaxPushSize+maxManifest)
	done = func() {
		r.Close()
		release()
	}
	br = bufio.NewReaderSize(r, 64<<10)
	man, err = readManifest(br, s.cfg.MaxRefs)
	return br, man, done, err
}

// pushListAge is how old a listing of upstream a push may judge by when
// its manifest agrees with it.
const pushListAge = 2 * time.Second

// agrees reports whether every update's old id is what refs says: the
// listing the helper saw is the one this instance holds.
func agrees(us []wire.Update, refs *upstream.Refs) bool {
	for _, u := range us {
		id, ok := refs.Refs[u.Ref]
		if !ok {
			id = wire.ZeroID
		}
		if id != u.Old {
			return false
		}
	}
	return true
}

// readManifest reads the push manifest that opens the payload.
func readManifest(br *bufio.Reader, maxRefs int) (wire.PushManifest, error) {
	var m wire.PushManifest
	var n [4]byte
	if _, err := io.ReadFull(br, n[:]); err != nil {
		return m, fmt.Errorf("read the push manifest: %w", err)
	}
	size := binary.BigEndian.Uint32(n[:])
	if size > maxManifest {
		return m, tooLarge("the push manifest is %d bytes, more than this relay reads (%d)", size, maxManifest)
	}
	// The buffer grows with the bytes that come, not with the length the
	// payload claims: four bytes must not cost 256 MiB.
	var js bytes.Buffer
	if _, err := io.CopyN(&js, br, int64(size)); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return m, fmt.Errorf("read the push manifest: %w", err)
	}
	if err := json.Unmarshal(js.Bytes(), &m); err != nil {
		return m, badRequest("decode the push manifest: %v", err)
	}
	if len(m.Updates) == 0 {
		return m, badRequest("the push updates no ref")
	}
	if len(m.Updates) > maxRefs {
		return m, tooLarge("a push of %d refs is more than this relay takes at once (--max-refs %d): push them in batches of at most %d", len(m.Updates), maxRefs, maxRefs)
	}
	return m, nil
}

// checkManifest checks what needs neither upstream nor objects.
func (s *Server) checkManifest(m *wire.PushManifest) error {
	seen := make(map[string]bool, len(m.Updates))
	for _, u := range m.Updates {
		if !gitx.ValidRefName(u.Ref) {
			return badRequest("invalid ref name %q", u.Ref)
		}
		if seen[u.Ref] {
			return badRequest("ref %s appears twice", u.Ref)
		}
		seen[u.Ref] = true
		if !gitx.ValidOID(u.Old) || !gitx.ValidOID(u.New) {
			return badRequest("ref %s: old and new must be 40-hex object ids", u.Ref)
		}
		if u.Old == u.New {
			return badRequest("ref %s: nothing to update", u.Ref)
		}
	}
	if len(m.Options) > 100 {
		return badRequest("too many push options (%d, at most 100)", len(m.Options))
	}
	for _, o := range m.Options {
		if strings.ContainsAny(o, "\x00\n") || len(o) > 4096 {
			return badRequest("a push option holds a NUL, a newline or more than 4096 bytes")
		}
	}
	return nil
}

// plan decides, from upstream's refs and the server's policies, what each
// update may do before any object is looked at.
func (s *Server) plan(p *pushPlan) {
	for _, u := range p.man.Updates {
		r := &wire.RefResult{Ref: u.Ref}
		p.results[u.Ref] = r
		cur := p.refs.Refs[u.Ref]
		if cur == "" {
			cur = wire.ZeroID
		}
		isTag := strings.HasPrefix(u.Ref, "refs/tags/")
		switch {
		case !strings.HasPrefix(u.Ref, "refs/heads/") && !isTag:
			r.Reason, r.Detail = wire.ReasonForbidden, "the relay pushes only branches (refs/heads/*) and tags (refs/tags/*)"
		case cur == u.New:
			// Already there: from us before a crash, or from someone else.
			r.OK = true
		case cur != u.Old:
			r.Reason = wire.ReasonFetchFirst
		case u.New == wire.ZeroID && u.Ref == p.refs.Head:
			r.Reason = wire.ReasonDefaultBranch
		case isTag && u.Old != wire.ZeroID && u.New != wire.ZeroID && !u.Force:
			r.Reason = wire.ReasonAlreadyExists
		case isTag && u.Old != wire.ZeroID && u.New != wire.ZeroID && !s.cfg.AllowForce:
			r.Reason, r.Detail = wire.ReasonForbidden, "moving a tag is refused by this relay (the server runs without --allow-force)"
		}
	}
}

// checkBundle checks the bundle's header against the manifest and the
// mirror: its heads are new ids of the manifest, its prerequisites are
// objects upstream has, and every new id it does not carry is one
// upstream has. Branch moves whose new id is upstream's already are
// checked for fast-forward now; the others once the pack is indexed.
func (s *Server) checkBundle(ctx context.Context, p *pushPlan, hdr *bundle.Header) error {
	news := map[string]bool{}
	for _, u := range p.man.Updates {
		if u.New != wire.ZeroID {
			news[u.New] = true
		}
	}
	heads := map[string]bool{}
	for _, r := range hdr.Refs {
		if !news[r.OID] {
			return badRequest("the bundle's heads do not match the push manifest")
		}
		heads[r.OID] = true
	}
	var ask []string
	asked := map[string]bool{}
	for _, pr := range hdr.Prereqs {
		if !asked[pr.OID] {
			asked[pr.OID] = true
			ask = append(ask, pr.OID)
		}
	}
	for id := range news {
		if !heads[id] && !asked[id] {
			asked[id] = true
			ask = append(ask, id)
		}
	}
	have, err := p.lookup(ctx, ask)
	if err != nil {
		return err
	}
	for _, pr := range hdr.Prereqs {
		if have[pr.OID] == "" {
			return conflict("the bundle builds on %s, which upstream does not have (upstream moved: fetch and push again)", pr.OID)
		}
	}
	for _, u := range p.man.Updates {
		if u.New != wire.ZeroID && !heads[u.New] && have[u.New] == "" {
			if r := p.results[u.Ref]; !r.OK && r.Reason == "" {
				r.Reason, r.Detail = wire.ReasonMissing, "the push does not carry "+u.New+" and upstream does not have it"
			}
		}
	}
	var now []wire.Update
	for _, u := range p.man.Updates {
		if needsAncestry(u, p.results[u.Ref]) {
			if heads[u.New] {
				p.ancestry = append(p.ancestry, u)
			} else {
				now = append(now, u)
			}
		}
	}
	return s.checkAncestry(ctx, p.m.git, now, p)
}

// lookup says which of ids the mirror has (as gitx.Repo.Exists does).
// The tips of upstream's branches and tags as the push listed them are in
// the mirror, which the listing brought up to date: only other ids are
// looked up.
func (p *pushPlan) lookup(ctx context.Context, ids []string) (map[string]string, error) {
	tips := p.refs.Tips()
	have := map[string]string{}
	var ask []string
	for _, id := range ids {
		if tips[id] {
			have[id] = id
		} else {
			ask = append(ask, id)
		}
	}
	more, err := p.m.git.Exists(ctx, ask)
	if err != nil {
		return nil, err
	}
	maps.Copy(have, more)
	return have, nil
}

// checkRefOnly checks a push that carries no bundle: every new id must be
// upstream's already.
func (s *Server) checkRefOnly(ctx context.Context, p *pushPlan) error {
	var ask []string
	seen := map[string]bool{}
	for _, u := range p.man.Updates {
		if u.New != wire.ZeroID && !seen[u.New] {
			seen[u.New] = true
			ask = append(ask, u.New)
		}
	}
	have, err := p.lookup(ctx, ask)
	if err != nil {
		return err
	}
	var now []wire.Update
	for _, u := range p.man.Updates {
		r := p.results[u.Ref]
		if u.New != wire.ZeroID && have[u.New] == "" && !r.OK && r.Reason == "" {
			r.Reason, r.Detail = wire.ReasonMissing, "the push does not carry "+u.New+" and upstream does not have it"
		}
		if needsAncestry(u, r) && r.Reason == "" {
			now = append(now, u)
		}
	}
	return s.checkAncestry(ctx, p.m.git, now, p)
}

// needsAncestry says whether an update still to do moves an existing
// branch, which is a fast-forward or else a forced update.
func needsAncestry(u wire.Update, r *wire.RefResult) bool {
	return !r.OK && r.Reason == "" && u.Old != wire.ZeroID && u.New != wire.ZeroID && strings.HasPrefix(u.Ref, "refs/heads/")
}

// checkAncestry decides each branch move: a fast-forward goes; anything
// else needs both the client's force and this relay's --allow-force.
func (s *Server) checkAncestry(ctx context.Context, git gitx.Repo, ups []wire.Update, p *pushPlan) error {
	for _, u := range ups {
		ff, err := git.Ok(ctx, "merge-base", "--is-ancestor", u.Old, u.New)
		if err != nil {
			return fmt.Errorf("check that %s moves forward: %w", u.Ref, err)
		}
		if ff {
			continue
		}
		r := p.results[u.Ref]
		switch {
		case !u.Force:
			r.Reason = wire.ReasonNonFastForward
		case !s.cfg.AllowForce:
			r.Reason, r.Detail = wire.ReasonForbidden, "forced updates are refused by this relay (the server runs without --allow-force)"
		}
	}
	return nil
}

// sendUpstream streams the pack to upstream's receive-pack and, through a
// tee, into a quarantine of the mirror, holding the pack's last bytes back
// until everything checks out.
func (s *Server) sendUpstream(ctx context.Context, e *exch, p *pushPlan, pack io.Reader) (*upstream.PushResult, *gate, error) {
	req := upstream.PushRequest{Atomic: p.man.Atomic, Options: p.man.Options}
	needPack := false
	for _, u := range p.todo {
		req.Updates = append(req.Updates, upstream.Update{Ref: u.Ref, Old: u.Old, New: u.New})
		if u.New != wire.ZeroID {
			needPack = true
		}
	}
	if !needPack {
		if err := applying(e); err != nil {
			return nil, nil, err
		}
		res, err := p.pre.Push(ctx, req)
		if err != nil && res == nil {
			return nil, nil, s.upstreamErr(p.m, err)
		}
		return res, nil, nil
	}
	if pack == nil {
		if err := applying(e); err != nil {
			return nil, nil, err
		}
		req.Pack = bytes.NewReader(bundle.EmptyPack())
		res, err := p.pre.Push(ctx, req)
		if err != nil && res == nil {
			return nil, nil, s.upstreamErr(p.m, err)
		}
		return res, nil, nil
	}
	q, err := p.m.newQuarantine()
	if err != nil {
		return nil, nil, err
	}
	g, err := s.newGate(ctx, e, p, q, pack)
	if err != nil {
		q.drop()
		return nil, nil, err
	}
	req.Pack = g
	res, err := p.pre.Push(ctx, req)
	if gerr := g.finish(); gerr != nil {
		// The pack never completed upstream: no ref moved there.
		return nil, g, gerr
	}
	if err != nil && res == nil {
		if !g.released && ctx.Err() == nil {
			return nil, g, fmt.Errorf("%w: %w", errUpstreamLost, s.upstreamErr(p.m, err))
		}
		return nil, g, s.upstreamErr(p.m, err)
	}
	return res, g, nil
}

// errUpstreamLost is a push whose connection to upstream broke before
// the pack's end went out: upstream completed nothing.
var errUpstreamLost = errors.New("the connection to upstream broke before the pack was complete")

// gate is the pack on its way upstream. It tees every byte into a local
// index-pack, and keeps the last holdBack bytes until the payload has
// ended (so it checked out) and the ancestry checks have passed in the
// quarantine; a failure ends the stream with an error instead, which cuts
// upstream off before its pack can complete.
type gate struct {
	s       *Server
	e       *exch
	p       *pushPlan
	q       *quarantine
	src     io.Reader
	idx     *gitx.Cmd
	idxIn   io.WriteCloser
	later   bool // not indexed on the way: admitPush reads the pack again
	idxDone chan error
	idxErr  error
	// buf is what was read ahead and not yet passed on, at the start of
	// space (holdBack+gateRead bytes), which src is read into: the bytes
	// held back move to its front, and nothing else is copied.
	buf      []byte
	space    []byte
	eof      bool
	released bool
	err      error
	ctx      context.Context
	waitOnce sync.Once
}

const holdBack = 4096

func (s *Server) newGate(ctx context.Context, e *exch, p *pushPlan, q *quarantine, src io.Reader) (*gate, error) {
	if len(p.ancestry) > 0 && e.open.Inline {
		// An inline push's pack is small and here already: its own
		// commits settle most ancestry checks, with no index to wait for.
		b, err := io.ReadAll(src)
		if err != nil {
			return nil, payloadErr(err)
		}
		src = bytes.NewReader(b)
		p.ancestry = packAncestry(b, p.ancestry)
	}
	if len(p.ancestry) == 0 {
		done := make(chan error, 1)
		done <- nil
		return &gate{s: s, e: e, p: p, q: q, src: src, later: true, idxDone: done, ctx: ctx}, nil
	}
	c := q.git.Command(ctx, "index-pack", "--stdin", "--fix-thin")
	c.Stdout = io.Discard // set before the pipe: the command is built then
	in, err := c.StdinPipe()
	if err != nil {
		return nil, err
	}
	if err := c.Start(); err != nil {
		return nil, fmt.Errorf("index the pack: %w", err)
	}
	g := &gate{s: s, e: e, p: p, q: q, src: src, idx: c, idxIn: in, idxDone: make(chan error, 1), ctx: ctx}
	go func() { g.idxDone <- c.Wait() }()
	return g, nil
}

// gateRead is how much the gate reads from the payload at a time.
const gateRead = 256 << 10

func (g *gate) Read(b []byte) (int, error) {
	for {
		if g.err != nil {
			return 0, g.err
		}
		avail := len(g.buf)
		if !g.released {
			avail -= holdBack
		}
		if avail > 0 {
			n := copy(b, g.buf[:avail])
			g.buf = g.buf[n:]
			return n, nil
		}
		if g.released {
			return 0, io.EOF
		}
		if g.eof {
			if err := g.check(); err != nil {
				g.err = err
				return 0, err
			}
			// From here on the outcome is upstream's: the push is no
			// longer cancelled, and a shutdown waits for it.
			if err := applying(g.e); err != nil {
				g.err = err
				return 0, err
			}
			g.released = true
			continue
		}
		if g.space == nil {
			g.space = make([]byte, holdBack+gateRead)
		}
		kept := copy(g.space, g.buf)
		n, err := g.src.Read(g.space[kept:])
		g.buf = g.space[:kept+n]
		if n > 0 && g.idxIn != nil {
			if _, werr := g.idxIn.Write(g.buf[kept:]); werr != nil {
				// The local index is only needed for checks and the
				// mirror; its failure is reported when it matters.
				g.idxIn.Close()
				g.idxIn = nil
			}
		}
		if err == io.EOF {
			g.eof = true
		} else if err != nil {
			g.err = err
			return 0, err
		}
	}
}

// waitIndex waits for the local index-pack.
func (g *gate) waitIndex() error {
	g.waitOnce.Do(func() {
		if g.idxIn != nil {
			g.idxIn.Close()
			g.idxIn = nil
		}
		g.idxErr = <-g.idxDone
	})
	return g.idxErr
}

// check runs once the whole payload has authenticated and matched: the
// ancestry of branch moves whose new ids the pack carries, in the
// quarantine.
func (g *gate) check() error {
	if len(g.p.ancestry) == 0 {
		return nil
	}
	if err := g.waitIndex(); err != nil {
		return fmt.Errorf("index the pushed pack: %w", err)
	}
	if err := g.s.checkAncestry(g.ctx, g.q.git, g.p.ancestry, g.p); err != nil {
		return err
	}
	for _, u := range g.p.ancestry {
		if r := g.p.results[u.Ref]; r.Reason != "" {
			return &userError{http.StatusForbidden, wire.CodeForbidden, fmt.Sprintf("%s: %s", u.Ref, r.String())}
		}
	}
	return nil
}

// close waits for the local index-pack and drops the quarantine (after
// admitPush, it is empty).
func (g *gate) close() {
	_ = g.waitIndex()
	g.q.drop()
}

// finish reports a failure of the payload or of the checks, which ended
// the push before upstream could complete it.
func (g *gate) finish() error {
	if g.err != nil {
		_ = g.waitIndex()
		return payloadErr(g.err)
	}
	return nil
}

// payloadErr tells a payload that does not check out from other failures.
func payloadErr(err error) error {
	if errors.Is(err, payload.ErrMismatch) {
		return badRequest("the pushed payload does not check out: %v", err)
	}
	return err
}

// applying marks a push whose outcome is now upstream's, unless its
// client cancelled it first: then the push must stop here.
func applying(e *exch) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cancelled {
		return errEnded
	}
	e.applying = true
	return nil
}

// record turns upstream's report into the results.
func (s *Server) record(ctx context.Context, p *pushPlan, res *upstream.PushResult) {
	var moved []string
	for _, u := range p.todo {
		r := p.results[u.Ref]
		reason, found := res.Refs[u.Ref]
		if found && reason == "" {
			r.OK = true
			continue
		}
		switch {
		case res.UnpackError != "":
			r.Reason, r.Detail = wire.ReasonUnpack, "upstream could not unpack: "+res.UnpackError
		case !found:
			r.Reason = wire.ReasonNoStatus
		default:
			r.Reason, r.Detail = wire.ReasonUpstream, s.redact(reason)
		}
		moved = append(moved, u.Ref)
	}
	if len(moved) == 0 {
		return
	}
	// A compare-and-swap that lost a race reads as a lock failure
	// upstream; tell the user in git's words that upstream moved, or that
	// the ref is as asked after all.
	now, err := p.m.remote.List(ctx)
	if err != nil {
		return
	}
	for _, ref := range moved {
		u := updateFor(p.man.Updates, ref)
		cur := now.Refs[ref]
		if cur == "" {
			cur = wire.ZeroID
		}
		r := p.results[ref]
		switch {
		case cur == u.New:
			r.OK, r.Reason, r.Detail = true, "", ""
		case cur != u.Old:
			r.Reason, r.Detail = wire.ReasonFetchFirst, ""
		}
	}
}

// admitPush lets the pushed objects into the mirror once upstream has
// them, and moves the mirror's refs with upstream's.
func (s *Server) admitPush(ctx context.Context, p *pushPlan, g *gate) error {
	if g != nil {
		if err := g.waitIndex(); err != nil {
			return fmt.Errorf("index the pushed pack: %w", err)
		}
		if g.later {
			if err := s.indexPushed(inBackground(ctx), g.e, g.q, nil); err != nil {
				return err
			}
		}
		if err := g.q.admit(p.m); err != nil {
			return err
		}
	}
	var cmds strings.Builder
	for _, u := range p.todo {
		if u.New == wire.ZeroID {
			cmds.WriteString("delete " + u.Ref + "\n")
		} else {
			cmds.WriteString("update " + u.Ref + " " + u.New + "\n")
		}
	}
	if _, err := p.m.git.RunInput(ctx, strings.NewReader(cmds.String()), "update-ref", "--stdin"); err != nil {
		p.m.refsMoved(nil)
		return err
	}
	p.m.refsMoved(func(refs map[string]string) {
		for _, u := range p.todo {
			if u.New == wire.ZeroID {
				delete(refs, u.Ref)
			} else {
				refs[u.Ref] = u.New
			}
		}
	})
	return p.m.packRefs(ctx, len(p.todo))
}

func updateFor(us []wire.Update, ref string) wire.Update {
	for _, u := range us {
		if u.Ref == ref {
			return u
		}
	}
	return wire.Update{}
}

func allOK(results map[string]*wire.RefResult) bool {
	for _, r := range results {
		if !r.OK {
			return false
		}
	}
	return true
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
				r.Reason = wire.ReasonAtomic
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

func stillPending(ups []wire.Update, results map[string]*wire.RefResult) []wire.Update {
	var out []wire.Update
	for _, u := range ups {
		if r := results[u.Ref]; !r.OK && r.Reason == "" {
			out = append(out, u)
		}
	}
	return out
}

// summarize says in a few words what happened to the refs, for the log:
// never their names, which the log must not hold.
func summarize(results []wire.RefResult) string {
	ok, refused := 0, 0
	for _, r := range results {
		if r.OK {
			ok++
		} else {
			refused++
		}
	}
	return fmt.Sprintf("%d ok, %d refused", ok, refused)
}
