package helper

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/git-relay/git-relay/internal/gitx"
	"github.com/git-relay/git-relay/internal/payload"
	"github.com/git-relay/git-relay/internal/seal"
	"github.com/git-relay/git-relay/internal/wire"
)

const zeroID = wire.ZeroID

// refList is upstream's refs, as the relay lists them for a push.
type refList struct {
	wire.RefsHeader
	Refs map[string]string
}

// list asks the relay for upstream's refs, any number of them: the list
// comes as an answer's payload, in chunks when it is large. forPush says
// that a push follows.
func (h *Helper) list(ctx context.Context, forPush bool) (*refList, error) {
	x, err := h.newExchange(wire.Open{Kind: wire.KindRefs, Push: forPush})
	if err != nil {
		return nil, err
	}
	st, tail, err := x.openIt(ctx, nil, "upstream's refs")
	if err == nil {
		st, tail, err = x.outcome(ctx, st, tail, "upstream's refs")
	}
	if err != nil {
		return nil, err
	}
	h.upFirst = st.UpFirst
	if st.Phase == wire.PhaseFailed || st.Phase == wire.PhaseCancelled {
		return nil, fmt.Errorf("%s: %s", h.repo, st.Message)
	}
	r, err := x.download(ctx, st, tail, 1<<36, nil)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	l, err := parseRefList(r)
	if err != nil {
		return nil, err
	}
	h.refs, h.have = l, nil
	return l, nil
}

// parseRefList reads a ref listing (wire.KindRefs): the RefsHeader's JSON
// on the first line, then one "<id> <name>" line per ref.
func parseRefList(r io.Reader) (*refList, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	line, err := br.ReadBytes('\n')
	if err != nil {
		return nil, fmt.Errorf("read upstream's refs: %w", err)
	}
	l := &refList{Refs: map[string]string{}}
	if err := json.Unmarshal(line, &l.RefsHeader); err != nil {
		return nil, fmt.Errorf("read upstream's refs: %w", err)
	}
	for {
		line, err := br.ReadString('\n')
		if err == io.EOF && line == "" {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read upstream's refs: %w", err)
		}
		id, name, ok := strings.Cut(strings.TrimSuffix(line, "\n"), " ")
		if !ok || !gitx.ValidOID(id) {
			return nil, fmt.Errorf("read upstream's refs: bad line %q", line)
		}
		l.Refs[name] = id
	}
	return l, nil
}

// refUpdate is one push line, checked.
type refUpdate struct {
	wire.Update
	src    string
	result string // the line for git, once known
}

func (u *refUpdate) refuse(why string) { u.result = "error " + u.Ref + " " + why }

// push handles one batch of push lines and returns the status lines.
func (h *Helper) push(ctx context.Context, specs []string) ([]string, error) {
	if h.refs == nil {
		h.startLookup(ctx)
		h.startPacker(ctx)
		if _, err := h.list(ctx, true); err != nil {
			return nil, err
		}
	}
	ups := make([]*refUpdate, 0, len(specs))
	for _, spec := range specs {
		force := strings.HasPrefix(spec, "+")
		src, dst, ok := strings.Cut(strings.TrimPrefix(spec, "+"), ":")
		if !ok {
			return nil, fmt.Errorf("bad push line %q from git", spec)
		}
		ups = append(ups, &refUpdate{src: src, Update: wire.Update{Ref: dst, Force: force}})
	}
	if err := h.check(ctx, ups); err != nil {
		return nil, err
	}
	var todo []*refUpdate
	failed := false
	for _, u := range ups {
		if u.result == "" {
			todo = append(todo, u)
		} else if strings.HasPrefix(u.result, "error ") {
			failed = true
		}
	}
	if h.atomic && failed {
		for _, u := range todo {
			u.refuse(string(wire.ReasonAtomic))
		}
		todo = nil
	}
	if max := h.refs.MaxRefs; max > 0 && len(todo) > max {
		return nil, fmt.Errorf("a push of %d refs is more than the relay takes at once (%d): push them in batches of at most %d", len(todo), max, max)
	}
	if len(todo) > 0 {
		if err := h.send(ctx, todo); err != nil {
			return nil, err
		}
	}
	out := make([]string, len(ups))
	for i, u := range ups {
		out[i] = u.result
	}
	return out, nil
}

// fewRefs is how many pushed refs check looks up one by one.
const fewRefs = 32

// check validates the updates against upstream's refs and the local
// repository, with one git for all the names and one per branch that
// moves. git does not check for a helper that upstream's tip is in the
// local repository, so this is where divergence is refused, before
// anything is uploaded.
func (h *Helper) check(ctx context.Context, ups []*refUpdate) error {
	// Sources that are full ref names (what git sends for --tags,
	// --mirror and most pushes) come from one listing of the refs; the
	// rest, and upstream's old ids, from one cat-file.
	var names []string
	seen := map[string]bool{}
	found := map[string]string{}
	byRef := false
	for _, u := range ups {
		if strings.HasPrefix(u.src, "refs/") {
			byRef = true
		}
	}
	// A few names are looked up by cat-file with the rest; many (--mirror,
	// --tags) in one listing of every ref.
	if byRef && len(ups) > fewRefs {
		out, err := h.git.Run(ctx, "for-each-ref", "--format=%(objectname) %(refname)")
		if err != nil {
			return fmt.Errorf("list the local refs: %w", err)
		}
		for _, line := range strings.Split(out, "\n") {
			if id, ref, ok := strings.Cut(line, " "); ok {
				found[ref] = id
			}
		}
	}
	for _, u := range ups {
		if u.src != "" && found[u.src] == "" && !seen[u.src] {
			seen[u.src] = true
			names = append(names, u.src)
		}
		if old := h.refs.Refs[u.Ref]; old != "" && !seen[old] {
			seen[old] = true
			names = append(names, old)
		}
	}
	// Upstream's other tips too, in the same git: the bundle's
	// prerequisites are those this repository has (bundleFor).
	for _, id := range h.refs.Refs {
		if !seen[id] {
			seen[id] = true
			names = append(names, id)
		}
	}
	ffs := h.startAncestry(ctx, ups)
	more, err := h.exists(ctx, names)
	if err != nil {
		return fmt.Errorf("look up the pushed objects: %w", err)
	}
	h.have = more
	for n, id := range more {
		found[n] = id
	}
	for _, u := range ups {
		h.checkOne(ctx, u, found, ffs[u])
	}
	return nil
}

// startLookup starts, beside the listing that comes next, the git that
// check looks names up with, unless it is started already; one that
// fails to start leaves check to start its own.
func (h *Helper) startLookup(ctx context.Context) {
	h.lookup.start(func() *gitx.Lookup {
		l, _ := h.git.StartLookup(ctx)
		return l
	})
}

// exists is h.git.Exists, on the git startLookup started when there is
// one.
func (h *Helper) exists(ctx context.Context, names []string) (map[string]string, error) {
	if l := h.lookup.take(); l != nil {
		return l.Exists(names)
	}
	return h.git.Exists(ctx, names)
}

// fewMoves is how many branch moves startAncestry checks at once.
const fewMoves = 4

// startAncestry starts, for a push of a few branch moves, a git per move
// that says whether it is a fast-forward, while cat-file looks up the
// names: checkOne takes its answer if it needs one.
func (h *Helper) startAncestry(ctx context.Context, ups []*refUpdate) map[*refUpdate]<-chan bool {
	ffs := map[*refUpdate]<-chan bool{}
	for _, u := range ups {
		old := h.refs.Refs[u.Ref]
		if old == "" || u.src == "" || !strings.HasPrefix(u.Ref, "refs/heads/") {
			continue
		}
		if len(ffs) == fewMoves {
			return ffs
		}
		c := make(chan bool, 1)
		ffs[u] = c
		go func() {
			ff, err := h.git.Ok(ctx, "merge-base", "--is-ancestor", old, u.src)
			c <- ff && err == nil
		}()
	}
	return ffs
}

// checkOne decides one update; ff, when not nil, says whether it moves a
// branch forward.
func (h *Helper) checkOne(ctx context.Context, u *refUpdate, found map[string]string, ff <-chan bool) {
	if !strings.HasPrefix(u.Ref, "refs/heads/") && !strings.HasPrefix(u.Ref, "refs/tags/") {
		u.refuse(quote("the relay pushes only branches (refs/heads/*) and tags (refs/tags/*)"))
		return
	}
	old := h.refs.Refs[u.Ref]
	if old == "" {
		old = zeroID
	}
	u.Old = old
	if want, leased := h.cas[u.Ref]; leased {
		if want == "" {
			want = zeroID
		}
		if want != old {
			u.refuse(string(wire.ReasonStaleInfo))
			return
		}
		// A lease that holds allows a forced update; git does not always
		// mark such a push line with '+'.
		u.Force = true
	}
	if u.src == "" {
		u.New = zeroID
		switch {
		case old == zeroID:
			u.refuse(quote("remote ref does not exist"))
		case u.Ref == h.refs.Head:
			u.refuse(quote("refusing to delete the default branch " + u.Ref))
		}
		return
	}
	u.New = found[u.src]
	if u.New == "" {
		u.refuse(quote("src refspec " + u.src + " does not match any object"))
		return
	}
	switch {
	case old == u.New:
		u.result = "ok " + u.Ref + " up to date"
		return
	case old == zeroID:
		// A forced creation is a creation: there is nothing to force.
		u.Force = false
		return
	}
	if found[old] == "" {
		h.outOfSync(u.Ref, fmt.Sprintf("upstream %s is at %s, which this repository does not have", short(u.Ref), old[:12]))
		u.refuse(string(wire.ReasonFetchFirst))
		return
	}
	if strings.HasPrefix(u.Ref, "refs/tags/") {
		if !u.Force {
			u.refuse(string(wire.ReasonAlreadyExists))
			return
		}
	} else if !h.fastForward(ctx, old, u.New, ff) {
		if !u.Force {
			h.outOfSync(u.Ref, fmt.Sprintf("upstream %s is at %s, which %s does not contain", short(u.Ref), old[:12], u.src))
			u.refuse(string(wire.ReasonNonFastForward))
			return
		}
	} else {
		// A fast-forward needs no force, whatever the push line says.
		u.Force = false
	}
	if u.Force && !h.refs.AllowForce {
		u.refuse(quote("forced updates are refused by the relay (the server runs without --allow-force)"))
	}
}

// fastForward says whether new contains old: ff's answer when there is
// one, or git's.
func (h *Helper) fastForward(ctx context.Context, old, new string, ff <-chan bool) bool {
	if ff != nil {
		return <-ff
	}
	ok, err := h.git.Ok(ctx, "merge-base", "--is-ancestor", old, new)
	return ok && err == nil
}

func (h *Helper) outOfSync(ref, why string) {
	h.ui.warn("relay: ERR_OUT_OF_SYNC: %s. Your branch has diverged from the external repository or is behind it; pull from it first: git pull relay::%s %s", why, h.repo, short(ref))
}

func short(ref string) string {
	return strings.TrimPrefix(strings.TrimPrefix(ref, "refs/heads/"), "refs/tags/")
}

func quote(s string) string { return strconv.Quote(s) }

// send bundles what upstream lacks for the updates and pushes it through
// the relay, uploading while git writes the bundle, and reports what
// became of each ref.
func (h *Helper) send(ctx context.Context, ups []*refUpdate) error {
	man := wire.PushManifest{Atomic: h.atomic, Options: h.pushOptions}
	for _, u := range ups {
		man.Updates = append(man.Updates, u.Update)
	}
	manJSON, err := json.Marshal(man)
	if err != nil {
		return err
	}
	spec, err := h.bundleFor(ctx, ups)
	if err != nil {
		return err
	}
	if spec == nil {
		h.ui.detail("upstream has every object: updating refs only")
	}
	if h.dryRun {
		if spec != nil {
			b, empty, err := h.startBundle(ctx, spec)
			if err != nil {
				return err
			}
			if !empty {
				if _, err := io.Copy(io.Discard, b.out); err != nil {
					b.stop()
					return err
				}
				if err := b.wait(); err != nil {
					return err
				}
			}
		}
		for _, u := range ups {
			u.result = "ok " + u.Ref
		}
		return nil
	}
	dir := h.resumeDir("push", manJSON)
	var st *wire.Status
	for attempt := 0; ; attempt++ {
		st, err = h.sendOnce(ctx, manJSON, spec, dir)
		if errors.Is(err, errDiverged) && attempt == 0 {
			h.ui.detail("the bundle came out different from the interrupted push's: starting over")
			continue
		}
		if err != nil {
			return err
		}
		break
	}
	h.report(ups, st)
	return nil
}

// report turns the outcome into git's status lines.
func (h *Helper) report(ups []*refUpdate, st *wire.Status) {
	if st.Phase != wire.PhaseDone {
		// Nothing landed; git prints the reason next to each ref.
		why := st.Message
		if why == "" {
			why = st.Phase
		}
		for _, u := range ups {
			u.refuse(quote("the relay refused the push: " + why))
		}
		return
	}
	byRef := map[string]wire.RefResult{}
	for _, r := range st.Results {
		byRef[r.Ref] = r
	}
	for _, u := range ups {
		r, ok := byRef[u.Ref]
		switch {
		case !ok:
			u.refuse(quote("the relay reported nothing for this ref"))
		case r.OK && u.Force:
			u.result = "ok " + u.Ref + " forced update"
		case r.OK:
			u.result = "ok " + u.Ref
		case r.Reason == wire.ReasonFetchFirst:
			h.outOfSync(u.Ref, "upstream "+short(u.Ref)+" moved while this push was on its way")
			u.refuse(string(r.Reason))
		case r.Reason == wire.ReasonNonFastForward || r.Reason == wire.ReasonAlreadyExists || r.Reason == wire.ReasonStaleInfo:
			u.refuse(string(r.Reason))
		default:
			u.refuse(quote(r.String()))
		}
	}
}

// sendOnce makes one attempt: it opens the exchange (again, when an
// earlier run was interrupted), uploads what the server lacks, and
// returns the outcome.
func (h *Helper) sendOnce(ctx context.Context, manJSON []byte, spec *bundleSpec, dir string) (*wire.Status, error) {
	var b *bundleRun
	src := io.Reader(bytes.NewReader(manifestBlock(manJSON)))
	if spec != nil {
		var empty bool
		var err error
		if b, empty, err = h.startBundle(ctx, spec); err != nil {
			return nil, err
		}
		if !empty {
			src = io.MultiReader(src, b.out)
		}
	}
	chunkSize := payload.ChunkSize(h.maxBdy, 0)
	resumed := findPushResume(dir)
	// A push whose whole payload fits the first chunk goes in one
	// request, which the server answers with the outcome: read that much
	// first. A larger one opens its exchange at once, so that the relay
	// starts pushing to upstream while git is still writing the bundle;
	// waiting to see whether all of a body's worth comes would hold
	// upstream back by the time git takes to write megabytes.
	pre := make([]byte, min(inlineMax(h.maxBdy), payload.MinChunk)-1-payload.TrailerSize+1)
	n, err := io.ReadFull(src, pre)
	switch {
	case (err == io.EOF || err == io.ErrUnexpectedEOF) && resumed == nil:
		if b != nil {
			if err := b.wait(); err != nil {
				return nil, err
			}
		}
		return h.sendInline(ctx, payload.Bytes(pre[:n]))
	case err != nil && err != io.EOF && err != io.ErrUnexpectedEOF:
		if b != nil {
			b.stop()
		}
		return nil, fmt.Errorf("read the bundle: %w", err)
	}
	src = io.MultiReader(bytes.NewReader(pre[:n]), src)
	// One buffer per worker, one being filled and one held while the
	// exchange opens: memory stays at a few chunks whatever the size.
	free := make(chan []byte, chunkWorkers+2)
	for range chunkWorkers + 2 {
		free <- nil // made as the chunks need them (SplitRamp)
	}
	chunks := make(chan split, 1)
	splitCtx, stopSplit := context.WithCancel(ctx)
	splitDone := make(chan struct{})
	defer func() {
		// Stop the splitter, and git with it: a splitter waiting for a
		// buffer gets fresh ones until it notices.
		stopSplit()
		for waiting := true; waiting; {
			select {
			case <-splitDone:
				waiting = false
			case free <- nil:
			}
		}
		if b != nil {
			b.stop()
		}
	}()
	// The first chunks are small, so that the relay starts pushing to
	// upstream a moment after the upload begins; the rest suit the link.
	sizer := newChunkSizer(splitCtx.Done(), resumed.cutTo())
	go func() {
		defer close(splitDone)
		t, err := payload.SplitRamp(src, chunkSize, free, func(i uint32, final bool, buf []byte) error {
			select {
			case chunks <- split{c: chunk{i: i, final: final, buf: buf}}:
				return nil
			case <-splitCtx.Done():
				return splitCtx.Err()
			}
		}, sizer.size)
		if err == nil && b != nil {
			err = b.wait()
		}
		select {
		case chunks <- split{end: true, t: t, err: err}:
		case <-splitCtx.Done():
		}
	}()
	// The exchange opens while the first chunk is cut, and a new push's
	// resume record is written while it opens. A relay that takes it gets
	// the first chunk with the Open instead, a round trip sooner; the
	// record then holds its tag before it goes.
	var x *exchange
	var rec chan pushRecord
	var first split
	var tail []byte // the first chunk, sealed, when it goes with the Open
	began := time.Now()
	if resumed != nil {
		if x, err = h.exchangeFrom(resumed.open); err != nil {
			resumed.remove()
			return nil, err
		}
		h.ui.detail("resuming the interrupted push %s", x.id)
	} else {
		if x, err = h.newExchange(wire.Open{Kind: wire.KindPush, ChunkSize: chunkSize, First: h.upFirst}); err != nil {
			return nil, err
		}
		if x.open.First {
			if first, err = nextChunk(ctx, chunks); err != nil {
				return nil, err
			}
			if resumed, err = newPushResume(dir, x.raw); err != nil {
				return nil, err
			}
			// It goes when it fits a body beside the message with room to
			// spare, as an inline upload does: the relay took the chunk
			// size, so a body that size fits its cap.
			if !first.c.final && len(first.c.buf)+len(x.raw) <= inlineMax(int64(chunkSize)) {
				tail = x.up.Seal(first.c.buf[:0], 0, false, first.c.buf)
				if _, err := resumed.record(0, len(first.c.buf), tail[len(tail)-seal.Overhead:]); err != nil {
					resumed.remove()
					return nil, err
				}
				first.c.buf = tail
			}
		} else {
			rec = make(chan pushRecord, 1)
			go func() {
				r, err := newPushResume(dir, x.raw)
				rec <- pushRecord{r, err}
			}()
		}
	}
	st, _, err := x.openWith(ctx, tail, "opening the push")
	if rec != nil {
		r := <-rec
		if r.err != nil {
			if err == nil {
				x.cancel()
			}
			return nil, r.err
		}
		resumed = r.r
	}
	if err != nil {
		h.giveUp(ctx, x, resumed, err)
		return nil, err
	}
	if wire.Ended(st.Phase) {
		// An earlier run got this far and the push ended meanwhile.
		resumed.remove()
		if st.Phase == wire.PhaseCancelled {
			return nil, errDiverged // start over as a new exchange
		}
		return st, nil
	}
	if tail != nil {
		// The relay holds the first chunk: the upload goes on from the
		// second.
		sizer.sent(0)
		sizer.settle(0, len(tail), began)
		free <- tail[:0]
		first = split{}
	}
	if first.c.buf == nil {
		if first, err = nextChunk(ctx, chunks); err != nil {
			h.giveUp(ctx, x, resumed, err)
			return nil, err
		}
	}
	held := map[uint32]bool{}
	for _, i := range st.Held {
		held[i] = true
	}
	var last *wire.Status
	var turn inTurn
	feed := func(ctx context.Context, send func(chunk) error) error {
		next := first
		for {
			if next.end {
				if next.err == nil && next.t != nil {
					h.ui.detail("bundle: %s, payload %s, %d chunk(s)", humanBytes(next.t.Size), humanBytes(next.t.Payload), next.t.Chunks)
				}
				return next.err
			}
			// Sealed here, in order, so that the record holds the tag of
			// what goes out before it goes (c.buf holds the ciphertext
			// from here on).
			sealed := x.up.Seal(next.c.buf[:0], next.c.i, next.c.final, next.c.buf)
			same, err := resumed.record(next.c.i, len(next.c.buf), sealed[len(sealed)-seal.Overhead:])
			next.c.buf = sealed
			if err != nil {
				free <- next.c.buf[:0]
				return err
			}
			if same && held[next.c.i] && !next.c.final {
				free <- next.c.buf[:0]
				sizer.settle(next.c.i, 0, time.Time{})
			} else {
				c := turn.next(next.c)
				sent := c.sent
				c.sent = func() { sizer.sent(c.i); sent() }
				if err := send(c); err != nil {
					return err
				}
			}
			select {
			case next = <-chunks:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	err = h.moveChunks(ctx, "upload", feed, func(ctx context.Context, _ int, c chunk) (int64, error) {
		defer func() { free <- c.buf[:0] }()
		began := time.Now()
		st, _, err := x.upChunk(ctx, c, c.buf)
		c.sent() // also when the request never read its body
		if err != nil {
			return 0, err
		}
		if c.final {
			last = st
		} else {
			sizer.settle(c.i, len(c.buf), began)
		}
		return int64(len(c.buf)), nil
	})
	if err != nil {
		if errors.Is(err, errDiverged) {
			x.cancel()
			resumed.remove()
			return nil, err
		}
		h.giveUp(ctx, x, resumed, err)
		return nil, err
	}
	if last == nil {
		last = st
	}
	st, _, err = x.outcome(ctx, last, nil, "the push's outcome")
	if err != nil {
		h.giveUp(ctx, x, resumed, err)
		return nil, err
	}
	resumed.remove()
	h.ui.done("server: %s.", timeline(st.Timeline))
	return st, nil
}

// split is what the bundle's splitter hands on: a chunk, or the end
// with the payload's totals or what stopped it.
type split struct {
	c   chunk
	end bool
	t   *payload.Totals
	err error
}

// nextChunk waits for the splitter's next chunk, where one must come:
// the first, or the one after a chunk that was not the final one.
func nextChunk(ctx context.Context, chunks <-chan split) (split, error) {
	select {
	case s := <-chunks:
		switch {
		case s.end && s.err != nil:
			return s, s.err
		case s.end:
			return s, errors.New("create bundle: it ended before its first chunk")
		}
		return s, nil
	case <-ctx.Done():
		return split{}, ctx.Err()
	}
}

// pushRecord is a new push's resume record, written while its exchange
// opens.
type pushRecord struct {
	r   *pushResume
	err error
}

// sendInline pushes a whole payload in the request that opens the
// exchange, and returns the outcome.
func (h *Helper) sendInline(ctx context.Context, p []byte) (*wire.Status, error) {
	x, err := h.newExchange(wire.Open{Kind: wire.KindPush, Inline: true})
	if err != nil {
		return nil, err
	}
	st, tail, err := x.openIt(ctx, p, "the push's outcome")
	if err == nil {
		st, _, err = x.outcome(ctx, st, tail, "the push's outcome")
	}
	if err != nil {
		h.giveUp(ctx, x, nil, err)
		return nil, err
	}
	h.ui.done("server: %s.", timeline(st.Timeline))
	return st, nil
}

// giveUp handles a push that failed: one the user interrupted or the
// relay refused is cancelled, so that it frees its place at once; one cut
// off on the way (the relay unreachable, a stall) is kept, server side
// and here, for the next run to resume.
func (h *Helper) giveUp(ctx context.Context, x *exchange, r *pushResume, err error) {
	if errors.Is(err, wire.ErrUnreachable) || errors.Is(err, wire.ErrStalled) {
		h.ui.detail("the push can resume: run it again")
		return
	}
	x.cancel()
	r.remove()
}

// manifestBlock frames the push manifest that opens the payload.
func manifestBlock(js []byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(js))), js...)
}

// timeline says how long the server spent in each phase.
func timeline(ts []wire.PhaseTime) string {
	var parts []string
	for i, t := range ts {
		if t.Phase == wire.PhaseReceiving {
			continue
		}
		if i+1 < len(ts) {
			parts = append(parts, fmt.Sprintf("%s %s", t.Phase, ts[i+1].At.Sub(t.At).Round(time.Millisecond)))
		} else {
			parts = append(parts, t.Phase)
		}
	}
	return strings.Join(parts, ", ")
}
