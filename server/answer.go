package server

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/git-relay/git-relay/internal/gitx"
	"github.com/git-relay/git-relay/internal/keyring"
	"github.com/git-relay/git-relay/internal/payload"
	"github.com/git-relay/git-relay/internal/pktline"
	"github.com/git-relay/git-relay/internal/seal"
	"github.com/git-relay/git-relay/internal/store"
	"github.com/git-relay/git-relay/internal/wire"
)

// The read-only exchanges answer with a payload: a ref listing for a
// push, upload-pack's capabilities, or upload-pack's answer to one git
// protocol v2 request (ls-refs, or a fetch round). Fetches are git's own
// protocol, tunnelled: negotiation, shallow and deepen, filters for
// partial clones and include-tag all come from git itself, on both ends.

// maxRequest bounds one git request (its haves, mostly).
const maxRequest = 64 << 20

// runAnswer writes the exchange's answer.
func (s *Server) runAnswer(ctx context.Context, e *exch) {
	err := s.answer(ctx, e)
	if errors.Is(err, errEnded) {
		return
	}
	if err != nil && s.stopping.Load() {
		return // shutting down: a client asks again
	}
	if err != nil {
		s.log.Warn("exchange failed", "id", e.id, "kind", e.open.Kind, "err", s.redact(err.Error()))
	}
	s.finish(context.WithoutCancel(ctx), e, nil, err)
}

func (s *Server) answer(ctx context.Context, e *exch) error {
	m, err := s.mirrors.get(e.open.Repo)
	if err != nil {
		return err
	}
	switch e.open.Kind {
	case wire.KindRefs:
		// Upstream's refs as they are now; the mirror follows them in
		// the background, while the client prepares its push.
		if e.open.Push {
			s.park(m, e.key.ID)
		}
		listed := time.Now()
		s.metrics.upstreamListings.Inc()
		refs, err := m.remote.List(ctx)
		if err != nil {
			return s.upstreamErr(m, err)
		}
		s.refreshLater(m, refs, listed)
		var b bytes.Buffer
		hdr, _ := json.Marshal(wire.RefsHeader{Head: refs.Head, AllowForce: s.cfg.AllowForce, MaxRefs: s.cfg.MaxRefs})
		b.Write(hdr)
		b.WriteByte('\n')
		names := make([]string, 0, len(refs.Refs))
		for n := range refs.Refs {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			b.WriteString(refs.Refs[n] + " " + n + "\n")
		}
		return s.writeAnswer(ctx, e, &b)
	case wire.KindCaps:
		s.refreshAhead(m, e.id)
		m.capsMu.Lock()
		caps := m.caps
		m.capsMu.Unlock()
		if caps != nil {
			return s.writeAnswer(ctx, e, bytes.NewReader(caps))
		}
		// The first time, upstream is asked too: a repository it does not
		// have is said so at once, and gets no mirror.
		if _, err := s.refresh(ctx, m, time.Now().Add(-5*time.Second)); err != nil {
			return err
		}
		m.rw.RLock()
		defer m.rw.RUnlock()
		var out bytes.Buffer
		c := m.git.Command(ctx, "upload-pack", "--stateless-rpc", "--advertise-refs", m.dir)
		c.Env = []string{"GIT_PROTOCOL=version=2"}
		c.Stdout = &out
		if err := c.Run(); err != nil {
			return fmt.Errorf("ask upload-pack for its capabilities: %w", err)
		}
		m.capsMu.Lock()
		m.caps = bytes.Clone(out.Bytes())
		m.capsMu.Unlock()
		return s.writeAnswer(ctx, e, &out)
	case wire.KindFetch:
		return s.fetch(ctx, e, m)
	}
	return fmt.Errorf("unknown exchange kind %q", e.open.Kind)
}

// fetch runs upload-pack on the mirror with the client's request.
func (s *Server) fetch(ctx context.Context, e *exch, m *mirror) error {
	next, release := s.upChunks(ctx, e)
	r := payload.NewReader(next, maxRequest)
	req, err := io.ReadAll(r)
	r.Close()
	release()
	if err != nil {
		return fmt.Errorf("read the request: %w", err)
	}
	cmd, err := requestCommand(req)
	if err != nil {
		return badRequest("%v", err)
	}
	// A listing shows upstream as it is now, or as it was when the git
	// command began: the command's first exchange (its capabilities)
	// refreshed the mirror (refreshAhead), and its later exchanges name
	// it. A fetch uses the same refresh, or one of the last 2 seconds (a
	// lazy fetch of a partial clone comes alone).
	began, follows := m.capsCameAt(e.open.Follows)
	since := time.Now().Add(-2 * time.Second)
	switch {
	case cmd == "ls-refs" && follows:
		since = began
	case cmd == "ls-refs":
		since = time.Now()
	case cmd == "fetch" && s.lacksWants(ctx, m, req):
		// Instances sharing a store keep mirrors of their own, and the
		// listing a fetch follows may have come from another instance
		// whose mirror has seen a newer push: an id wanted that this
		// mirror lacks makes it ask upstream now rather than answer "not
		// our ref" for a commit upstream has.
		since = time.Now()
	case follows && began.Before(since):
		since = began
	}
	var ahead *lsRefsRun
	if cmd == "ls-refs" && m.listedSince(since) == nil {
		ahead = lsRefsAhead(ctx, m, req)
	}
	if _, err := s.refresh(ctx, m, since); err != nil {
		if ahead != nil {
			ahead.wait()
		}
		return err
	}
	if ahead != nil {
		if out, ok := ahead.result(); ok {
			s.metrics.lsRefsAhead.WithLabelValues("used").Inc()
			return s.writeAnswer(ctx, e, bytes.NewReader(out))
		}
		s.metrics.lsRefsAhead.WithLabelValues("dropped").Inc()
	}
	m.rw.RLock()
	defer m.rw.RUnlock()
	c := m.uploadPack(ctx, req)
	out, err := c.StdoutPipe()
	if err != nil {
		return err
	}
	if err := c.Start(); err != nil {
		return err
	}
	// upload-pack's answer goes out as it writes it; only an upload-pack
	// that exits cleanly lets the answer end, so a dead one is never
	// passed on as a complete answer.
	var answer io.Reader = &exitReader{r: out, wait: c.Wait}
	if cmd == "fetch" {
		// The pack in full packets rather than in the small ones
		// upload-pack writes when it is read as fast as it writes:
		// git's client wakes up for each.
		answer = pktline.Coalesce(answer)
	}
	werr := s.writeAnswer(ctx, e, answer)
	if werr != nil {
		out.Close()
		_ = c.Wait()
	}
	return werr
}

// uploadPack is upload-pack on the mirror, speaking protocol v2, with the
// request req on its stdin. The caller holds m.rw for reading.
func (m *mirror) uploadPack(ctx context.Context, req []byte) *gitx.Cmd {
	c := m.git.Command(ctx, "upload-pack", "--stateless-rpc", m.dir)
	c.Env = []string{"GIT_PROTOCOL=version=2"}
	c.Stdin = bytes.NewReader(req)
	return c
}

// lsRefsRun is an ls-refs run on the mirror while a refresh lists
// upstream: a listing must wait for that refresh, and most refreshes find
// upstream as the mirror has it, so that the answer is ready when the
// refresh ends instead of a git run later. It is good only if no ref of
// the mirror, HEAD included, moved from before it began until the refresh
// ended (refsGen), and it is kept to maxLsRefsAhead bytes.
type lsRefsRun struct {
	m    *mirror
	gen  uint64
	out  []byte
	err  error
	done chan struct{}
}

// maxLsRefsAhead bounds an ls-refs answer run ahead: a larger one (a
// repository of tens of thousands of refs) is run again after the
// refresh and streamed.
const maxLsRefsAhead = 1 << 20

func lsRefsAhead(ctx context.Context, m *mirror, req []byte) *lsRefsRun {
	r := &lsRefsRun{m: m, gen: m.refsGen(), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		m.rw.RLock()
		defer m.rw.RUnlock()
		c := m.uploadPack(ctx, req)
		out := &cappedBuffer{max: maxLsRefsAhead}
		c.Stdout = out
		r.err = c.Run()
		r.out = out.b
	}()
	return r
}

func (r *lsRefsRun) wait() { <-r.done }

// result waits for the run and returns its answer, if it holds: call it
// once the refresh has ended.
func (r *lsRefsRun) result() ([]byte, bool) {
	r.wait()
	return r.out, r.err == nil && r.m.refsGen() == r.gen
}

// cappedBuffer keeps what is written up to max bytes, and fails a write
// past it.
type cappedBuffer struct {
	b   []byte
	max int
}

var errTooMuch = errors.New("more output than was expected")

func (c *cappedBuffer) Write(p []byte) (int, error) {
	if len(c.b)+len(p) > c.max {
		return 0, errTooMuch
	}
	c.b = append(c.b, p...)
	return len(p), nil
}

// lacksWants says whether the mirror lacks an object that the fetch
// request wants (or cannot tell, having none yet).
func (s *Server) lacksWants(ctx context.Context, m *mirror, req []byte) bool {
	wants := requestWants(req)
	if len(wants) == 0 {
		return false
	}
	// The branches and tags of the last refresh are in the mirror: a
	// fetch of what the listing just before it showed (a clone) needs no
	// lookup.
	if refs := m.lastRefs(); refs != nil {
		tips := refs.Tips()
		if !slices.ContainsFunc(wants, func(w string) bool { return !tips[w] }) {
			return false
		}
	}
	return m.lacksAny(ctx, wants)
}

// requestWants returns the ids that the "want" lines of a protocol v2
// fetch request name.
func requestWants(req []byte) []string {
	var ids []string
	for len(req) >= 4 {
		n, err := strconv.ParseUint(string(req[:4]), 16, 16)
		if err != nil || int(n) > len(req) {
			break
		}
		if n < 4 { // flush, delimiter or response-end packet
			req = req[4:]
			continue
		}
		line := bytes.TrimSuffix(req[4:n], []byte("\n"))
		if id, ok := bytes.CutPrefix(line, []byte("want ")); ok && gitx.ValidOID(string(id)) {
			ids = append(ids, string(id))
		}
		req = req[n:]
	}
	return ids
}

// exitReader ends with the command's failure instead of io.EOF when it
// exits non-zero.
type exitReader struct {
	r    io.Reader
	wait func() error
	done bool
}

func (x *exitReader) Read(p []byte) (int, error) {
	if x.done {
		return 0, io.EOF
	}
	n, err := x.r.Read(p)
	if err == io.EOF && !x.done {
		x.done = true
		if werr := x.wait(); werr != nil {
			var gerr *gitx.Error
			if errors.As(werr, &gerr) {
				return n, fmt.Errorf("upload-pack: %s", gitx.Sanitize(gerr.Stderr))
			}
			return n, werr
		}
	}
	return n, err
}

// requestCommand reads the command of a protocol v2 request: its first
// pkt-line, "command=<name>".
func requestCommand(req []byte) (string, error) {
	if len(req) < 4 {
		return "", errors.New("empty git request")
	}
	n, err := strconv.ParseUint(string(req[:4]), 16, 16)
	if err != nil || n < 4 || int(n) > len(req) {
		return "", errors.New("the git request does not start with a pkt-line")
	}
	line := string(bytes.TrimSuffix(req[4:n], []byte("\n")))
	cmd, ok := bytes.CutPrefix([]byte(line), []byte("command="))
	if !ok {
		return "", fmt.Errorf("the git request starts with %q, not a command", line)
	}
	switch c := string(cmd); c {
	case "ls-refs", "fetch", "object-info":
		return c, nil
	default:
		return "", fmt.Errorf("git request %q is not served by the relay", c)
	}
}

// inlineMax is the largest answer that goes in the reply to its Open.
const inlineMax = 1 << 20

// writeAnswer sends r as the exchange's answer: inline when it is small
// enough to fit the reply, or else in chunks kept in the store, which the
// client downloads while the rest is still being written.
func (s *Server) writeAnswer(ctx context.Context, e *exch, r io.Reader) error {
	size := s.downChunkSize(e.open.MaxBody)
	// On the folder store one buffer does: a chunk is written in a few
	// milliseconds, and the next is read once it is stored. A store that
	// instances share is across the network, and a chunk's write takes a
	// round trip and its transfer: a second buffer takes the next chunk
	// from upload-pack meanwhile.
	nbuf := 1
	if s.shared() {
		nbuf = 2
	}
	// A small answer (a ref listing, capabilities, a short negotiation)
	// is read whole first, and gets buffers its own size instead of a
	// chunk's: it is all latency, and megabytes of fresh memory take
	// milliseconds to touch.
	split := size
	head := make([]byte, smallAnswer)
	n, err := io.ReadFull(r, head)
	switch {
	case err == io.EOF || err == io.ErrUnexpectedEOF:
		r, split = bytes.NewReader(head[:n]), n+2+payload.TrailerSize
	case err != nil:
		return err
	default:
		r = io.MultiReader(bytes.NewReader(head), r)
	}
	free := make(chan []byte, nbuf)
	for range nbuf {
		if split < size {
			free <- make([]byte, 0, split+1)
			continue
		}
		bp := s.getBuf(size + 1)
		defer s.putBuf(bp)
		free <- (*bp)[:0]
	}
	// One goroutine stores the chunks, in order.
	type job struct {
		i     uint32
		final bool
		chunk []byte
	}
	jobs := make(chan job, nbuf)
	var (
		storeErr error
		failed   atomic.Bool
	)
	stored := make(chan struct{})
	go func() {
		defer close(stored)
		for j := range jobs {
			if storeErr == nil {
				if storeErr = s.storeDown(ctx, e, j.i, j.final, j.chunk); storeErr != nil {
					failed.Store(true)
				}
			}
			free <- j.chunk[:0]
		}
	}()
	var stream *seal.Stream
	// The first chunks are small: the client has something to hand git
	// a moment after upload-pack begins.
	_, err = payload.SplitRamp(r, split, free, func(i uint32, final bool, chunk []byte) error {
		if failed.Load() {
			return errStoreFailed
		}
		if i == 0 && final && len(chunk) <= min(inlineMax, int(min(e.open.MaxBody, s.cfg.MaxBody))-8<<10) {
			// An answer that goes in a reply lives in this instance's
			// memory alone, so only an exchange not kept in the store
			// (whose Open is still waiting for it, here) answers inline; a
			// kept one may be asked about through any instance, and its
			// answer goes to the store. Decided and recorded under one
			// lock, against handleOpen keeping it meanwhile.
			e.mu.Lock()
			if !e.persisted {
				e.down.inline = append([]byte(nil), chunk...)
				next := e.st
				next.Down = &wire.Down{Inline: true, Chunks: 1, Final: true}
				next.Updated = time.Now().UTC()
				e.st = next
				e.notify()
				e.mu.Unlock()
				return nil
			}
			e.mu.Unlock()
		}
		if i == 0 {
			salt := randomSalt()
			var err error
			if stream, err = seal.New(e.key, keyring.LabelDownload, salt, wire.Hash(e.openRaw)); err != nil {
				return err
			}
			e.mu.Lock()
			e.down.stream = stream
			e.mu.Unlock()
			setDown := func(st *state) error {
				if wire.Ended(st.Phase) {
					return errEnded
				}
				st.Down = &wire.Down{Salt: hex.EncodeToString(salt), ChunkSize: size}
				return nil
			}
			// An exchange not kept yet goes to the store with its answer's
			// terms, in one write; one kept already is updated.
			wrote, err := s.persistWith(ctx, e, setDown)
			if err != nil {
				return err
			}
			if !wrote {
				if err := s.update(ctx, e, setDown); err != nil {
					return err
				}
			}
		}
		jobs <- job{i, final, chunk}
		return nil
	}, payload.Cut)
	// Before the buffers go back to the pool.
	close(jobs)
	<-stored
	if storeErr != nil {
		return storeErr
	}
	return err
}

// smallAnswer is the size up to which an answer is read whole before it
// is split (see writeAnswer).
const smallAnswer = 16 << 10

// errStoreFailed stops an answer whose chunk could not be stored; the
// store's error is the one reported.
var errStoreFailed = errors.New("an answer chunk could not be stored")

// storeDown keeps answer chunk i in the store and tells whoever waits
// for it.
func (s *Server) storeDown(ctx context.Context, e *exch, i uint32, final bool, chunk []byte) error {
	obj := append(chunk, flagOf(final))
	if _, err := s.store.Put(ctx, downKey(e.id, i), obj, store.PutOptions{Volatile: true}); err != nil {
		return fmt.Errorf("keep answer chunk %d: %w", i, err)
	}
	s.metrics.chunksOut.Inc()
	e.mu.Lock()
	e.down.chunks, e.down.final = i+1, final
	e.notify()
	e.mu.Unlock()
	if final {
		return s.update(ctx, e, func(st *state) error {
			st.Down.Chunks, st.Down.Final = i+1, true
			return nil
		})
	}
	return nil
}
