package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/git-relay/git-relay/internal/keyring"
	"github.com/git-relay/git-relay/internal/payload"
	"github.com/git-relay/git-relay/internal/seal"
	"github.com/git-relay/git-relay/internal/upstream"
	"github.com/git-relay/git-relay/internal/wire"
)

// A fetch is a session too: the server builds a bundle of what the client
// wants minus what it has, and the client downloads it one signed, sealed
// chunk at a time while git is still writing the rest. Chunks are sealed
// on demand from the payload file, so a dropped download resumes.

type fetchState struct {
	Phase   string       `json:"phase"` // wire.FetchPreparing, FetchSending, FetchReady, FetchFailed
	Message string       `json:"message,omitempty"`
	Totals  *wire.Totals `json:"totals,omitempty"`
	KeyID   string       `json:"keyId"`
	Created time.Time    `json:"created"`
}

// fetchProgress is what a fetch being written has produced so far. It
// lives in memory only: after a restart, a fetch that was still being
// written is reported failed, and the client asks again.
type fetchProgress struct {
	mu      sync.Mutex
	phase   string
	chunks  uint32        // chunks written whole to the payload file
	written int64         // payload bytes written
	final   bool          // the last chunk written is the final one
	changed chan struct{} // closed, and replaced, at every change
}

func newFetchProgress() *fetchProgress {
	return &fetchProgress{phase: wire.FetchPreparing, changed: make(chan struct{})}
}

// update changes the progress under its lock and wakes the waiters.
func (p *fetchProgress) update(f func()) {
	p.mu.Lock()
	f()
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
}

// wait waits until ok holds (it is called with the lock held), d passes or
// ctx ends.
func (p *fetchProgress) wait(ctx context.Context, d time.Duration, ok func() bool) {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		p.mu.Lock()
		if ok() {
			p.mu.Unlock()
			return
		}
		ch := p.changed
		p.mu.Unlock()
		select {
		case <-ch:
		case <-t.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

func (s *Server) fetchDir(id string) string { return filepath.Join(s.cfg.DataDir, "fetches", id) }

func (s *Server) handleFetchCreate(c *call) {
	var req wire.FetchRequest
	if err := json.Unmarshal(c.body, &req); err != nil {
		c.failErr(badRequest("decode fetch request: %v", err))
		return
	}
	h, err := s.openRepo(req.Repo)
	if err != nil {
		c.failErr(err)
		return
	}
	if len(req.Wants) == 0 || len(req.Wants) > 100000 || len(req.Haves) > 100000 {
		c.failErr(badRequest("a fetch wants 1 to 100000 objects and has at most 100000"))
		return
	}
	for _, id := range append(append([]string{}, req.Wants...), req.Haves...) {
		if !validOID(id) {
			c.failErr(badRequest("invalid object id %q", id))
			return
		}
	}
	maxBody := s.cfg.MaxBody
	if req.MaxBody > 0 && req.MaxBody < maxBody {
		maxBody = req.MaxBody
	}
	if maxBody < 64<<10 {
		c.failErr(badRequest("maxBody %d is too small", maxBody))
		return
	}
	id := newID()
	dir := s.fetchDir(id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		c.failErr(err)
		return
	}
	st := fetchState{Phase: wire.FetchPreparing, KeyID: c.key.ID, Created: time.Now().UTC()}
	if err := saveJSON(filepath.Join(dir, "state.json"), st); err != nil {
		c.failErr(err)
		return
	}
	prog := newFetchProgress()
	s.mu.Lock()
	s.fetches[id] = prog
	s.mu.Unlock()
	s.work.Add(1)
	go func() {
		defer s.work.Done()
		err := s.prepareFetch(context.Background(), h, id, c.key, req, maxBody, prog)
		if err != nil {
			msg := s.redactor(err.Error())
			s.log.Warn("fetch failed", "session", id, "repo", req.Repo, "err", msg)
			st := st
			st.Phase, st.Message = wire.FetchFailed, msg
			_ = saveJSON(filepath.Join(dir, "state.json"), st)
			prog.update(func() { prog.phase = wire.FetchFailed })
		}
		s.mu.Lock()
		delete(s.fetches, id)
		s.mu.Unlock()
	}()
	c.reply(http.StatusOK, wire.Session{Session: id})
}

// prepareFetch checks the request against a refreshed mirror, publishes
// the manifest, and writes the bundle (compressed when that pays) to the
// payload file that chunks are sealed from, telling prog as each chunk is
// complete so that the client downloads while git writes.
func (s *Server) prepareFetch(ctx context.Context, h *repoHandle, id string, key keyring.Key, req wire.FetchRequest, maxBody int64, prog *fetchProgress) error {
	unlock := s.repoLocks.lock(h.name)
	defer unlock()
	refs, err := s.list(ctx, h)
	if err == nil {
		err = s.refresh(ctx, h, refs)
	}
	if err != nil {
		return err
	}
	dir := s.fetchDir(id)
	revs, cleanup, err := s.fetchRevs(ctx, h, id, req, refs)
	if err != nil {
		return err
	}
	defer cleanup()
	salt := make([]byte, 32)
	if _, err := rand.Read(salt); err != nil {
		return err
	}
	m := wire.FetchManifest{Version: wire.FetchManifestVersion, Session: id, Repo: req.Repo, Salt: hex.EncodeToString(salt)}
	st := fetchState{KeyID: key.ID, Created: time.Now().UTC()}
	publish := func(phase string, t *wire.Totals) error {
		st.Phase, st.Totals = phase, t
		if err := saveJSON(filepath.Join(dir, "state.json"), st); err != nil {
			return err
		}
		prog.update(func() { prog.phase = phase })
		return nil
	}
	if revs == "" {
		// The client has everything already.
		raw, _ := json.Marshal(m)
		if err := writeFileAtomic(filepath.Join(dir, "manifest.json"), raw); err != nil {
			return err
		}
		return publish(wire.FetchReady, &wire.Totals{Compression: wire.CompressNone})
	}
	m.ChunkSize = payload.ChunkSize(maxBody) - 1 // the answer's flag byte
	c := h.mirror.Command(ctx, "bundle", "create", "-q", "-", "--stdin")
	c.Stdin = strings.NewReader(revs)
	stdout, err := c.StdoutPipe()
	if err != nil {
		return err
	}
	if err := c.Start(); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(dir, "payload"))
	if err != nil {
		stdout.Close()
		_ = c.Wait()
		return err
	}
	defer f.Close()
	free := make(chan []byte, 1)
	free <- make([]byte, 0, m.ChunkSize)
	// The manifest goes out once the compression is decided, on the
	// bundle's first bytes.
	decided := func(compression string) error {
		m.Compression = compression
		raw, _ := json.Marshal(m)
		if err := writeFileAtomic(filepath.Join(dir, "manifest.json"), raw); err != nil {
			return err
		}
		return publish(wire.FetchSending, nil)
	}
	t, err := payload.Split(stdout, m.ChunkSize, free, decided, func(i uint32, final bool, chunk []byte) error {
		defer func() { free <- chunk }()
		if _, err := f.Write(chunk); err != nil {
			return err
		}
		prog.update(func() {
			prog.chunks, prog.written, prog.final = i+1, prog.written+int64(len(chunk)), final
		})
		return nil
	})
	if err != nil {
		stdout.Close()
		_ = c.Wait()
		return err
	}
	if err := c.Wait(); err != nil {
		return fmt.Errorf("create bundle: %w", err)
	}
	return publish(wire.FetchReady, t)
}

// fetchRevs returns what `git bundle create --stdin` must be given for a
// bundle of req.Wants minus everything reachable from the haves that the
// mirror knows, or "" when the client already has everything. cleanup
// removes the temporary refs it made.
func (s *Server) fetchRevs(ctx context.Context, h *repoHandle, id string, req wire.FetchRequest, refs *upstream.Refs) (string, func(), error) {
	nothing := func() {}
	var check strings.Builder
	for _, w := range req.Wants {
		check.WriteString(w + "\n")
	}
	for _, hv := range req.Haves {
		check.WriteString(hv + "\n")
	}
	out, err := h.mirror.RunInput(ctx, strings.NewReader(check.String()), "cat-file", "--batch-check=%(objectname) %(objecttype)")
	if err != nil {
		return "", nothing, err
	}
	known := map[string]bool{}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[1] != "missing" {
			known[f[0]] = true
		}
	}
	for _, w := range req.Wants {
		if !known[w] {
			return "", nothing, notFound("upstream %s has no object %s (it may have moved: fetch again)", h.name, w)
		}
	}
	var not strings.Builder
	for _, hv := range req.Haves {
		if known[hv] {
			not.WriteString("^" + hv + "\n")
		}
	}
	// Is anything missing on the client's side at all?
	missing, err := h.mirror.RunInput(ctx, strings.NewReader(strings.Join(req.Wants, "\n")+"\n"+not.String()), "rev-list", "--objects", "-n", "1", "--stdin")
	if err != nil {
		return "", nothing, err
	}
	if strings.TrimSpace(missing) == "" {
		return "", nothing, nil
	}
	// Bundle from refs: git records raw ids badly in a bundle. A want that
	// is the tip of one of the mirror's refs is bundled by that ref; any
	// other gets a temporary ref.
	byID := map[string]string{}
	for name, oid := range refs.Refs {
		if cur, ok := byID[oid]; !ok || name < cur {
			byID[oid] = name
		}
	}
	var revs, tmp, del strings.Builder
	seen := map[string]bool{}
	for i, w := range req.Wants {
		ref, ok := byID[w]
		if !ok {
			ref = "refs/relay-fetch/" + id + "/" + strconv.Itoa(i)
			tmp.WriteString("create " + ref + " " + w + "\n")
			del.WriteString("delete " + ref + "\n")
		}
		if !seen[ref] {
			seen[ref] = true
			revs.WriteString(ref + "\n")
		}
	}
	cleanup := nothing
	if tmp.Len() > 0 {
		if _, err := h.mirror.RunInput(ctx, strings.NewReader(tmp.String()), "update-ref", "--stdin"); err != nil {
			return "", nothing, err
		}
		cleanup = func() {
			_, _ = h.mirror.RunInput(context.Background(), strings.NewReader(del.String()), "update-ref", "--stdin")
		}
	}
	revs.WriteString(not.String())
	return revs.String(), cleanup, nil
}

func (s *Server) loadFetch(id string, key keyring.Key) (fetchState, string, error) {
	if !sessRE.MatchString(id) {
		return fetchState{}, "", badRequest("invalid session id")
	}
	dir := s.fetchDir(id)
	var st fetchState
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil || json.Unmarshal(b, &st) != nil || st.KeyID != key.ID {
		return fetchState{}, "", notFound("no such fetch session %s (it may have expired)", id)
	}
	return st, dir, nil
}

// fetchProgressOf returns the progress of a fetch being written, or nil.
func (s *Server) fetchProgressOf(id string) *fetchProgress {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fetches[id]
}

// handleFetchStatus says where a fetch is. With wait=1 it holds the answer
// until the manifest is out (or a few seconds pass); with wait=ready,
// until every chunk is written and the totals are known.
func (s *Server) handleFetchStatus(c *call) {
	q := c.r.URL.Query()
	id := q.Get("session")
	st, dir, err := s.loadFetch(id, c.key)
	if err != nil {
		c.failErr(err)
		return
	}
	if w := q.Get("wait"); w != "" && st.Phase != wire.FetchReady && st.Phase != wire.FetchFailed {
		if p := s.fetchProgressOf(id); p != nil {
			p.wait(c.r.Context(), longPoll, func() bool {
				return p.phase == wire.FetchReady || p.phase == wire.FetchFailed || (w != "ready" && p.phase == wire.FetchSending)
			})
		}
		if st, dir, err = s.loadFetch(id, c.key); err != nil {
			c.failErr(err)
			return
		}
	}
	if (st.Phase == wire.FetchPreparing || st.Phase == wire.FetchSending) && s.fetchProgressOf(id) == nil {
		// The writer saves its last state before it leaves: read it again.
		if st, dir, err = s.loadFetch(id, c.key); err != nil {
			c.failErr(err)
			return
		}
		if st.Phase == wire.FetchPreparing || st.Phase == wire.FetchSending {
			// Nobody is writing it any more: a restart cut it short.
			st.Phase, st.Message = wire.FetchFailed, "the relay restarted while preparing this fetch: fetch again"
		}
	}
	out := wire.FetchStatus{Phase: st.Phase, Message: st.Message, Totals: st.Totals}
	if st.Phase == wire.FetchSending || st.Phase == wire.FetchReady {
		raw, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
		if err != nil {
			c.failErr(err)
			return
		}
		out.Manifest = raw
	}
	c.reply(http.StatusOK, out)
}

// handleFetchChunk answers one chunk: the final flag, then the chunk
// sealed on demand from the payload file. The same bytes every time (the
// key, nonce and associated data are fixed by the manifest and the
// index), so a download can be resumed or repeated. A chunk that git has
// not finished writing is waited for a few seconds.
func (s *Server) handleFetchChunk(c *call) {
	q := c.r.URL.Query()
	id := q.Get("session")
	st, dir, err := s.loadFetch(id, c.key)
	if err != nil {
		c.failErr(err)
		return
	}
	idx, err := strconv.ParseUint(q.Get("index"), 10, 32)
	if err != nil {
		c.failErr(badRequest("chunk index %q is not a number", q.Get("index")))
		return
	}
	i := uint32(idx)
	// Where the payload stands: from the writer while it writes, from the
	// state once it is done.
	var chunks uint32
	var written int64
	var final bool
	p := s.fetchProgressOf(id)
	if p == nil && st.Phase != wire.FetchReady && st.Phase != wire.FetchFailed {
		// The writer saves its last state before it leaves: read it again.
		if st, dir, err = s.loadFetch(id, c.key); err != nil {
			c.failErr(err)
			return
		}
	}
	if p != nil {
		p.wait(c.r.Context(), longPoll, func() bool { return p.chunks > i || p.final || p.phase == wire.FetchFailed })
		p.mu.Lock()
		chunks, written, final, st.Phase = p.chunks, p.written, p.final, p.phase
		p.mu.Unlock()
	} else if st.Phase == wire.FetchReady && st.Totals != nil {
		chunks, written, final = st.Totals.Chunks, st.Totals.PayloadSize, true
	} else if st.Phase != wire.FetchFailed {
		st.Phase = wire.FetchFailed
	}
	switch {
	case st.Phase == wire.FetchFailed:
		c.failErr(conflict("fetch session %s failed: fetch again", id))
		return
	case st.Phase == wire.FetchPreparing || (i >= chunks && !final):
		c.failErr(&userError{http.StatusConflict, wire.CodeNotReady, fmt.Sprintf("chunk %d is not written yet: ask again", i)})
		return
	case i >= chunks:
		c.failErr(&userError{http.StatusRequestedRangeNotSatisfiable, wire.CodeRange, fmt.Sprintf("chunk %d is past the final chunk %d", i, chunks-1)})
		return
	}
	raw, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		c.failErr(err)
		return
	}
	var m wire.FetchManifest
	if err := json.Unmarshal(raw, &m); err != nil {
		c.failErr(err)
		return
	}
	salt, _ := hex.DecodeString(m.Salt)
	stream, err := seal.New(c.key, keyring.LabelFetchPayload, salt, wire.ManifestHash(raw))
	if err != nil {
		c.failErr(err)
		return
	}
	f, err := os.Open(filepath.Join(dir, "payload"))
	if err != nil {
		c.failErr(notFound("fetch session %s has no payload (it may have expired)", id))
		return
	}
	defer f.Close()
	last := final && i == chunks-1
	off := int64(i) * int64(m.ChunkSize)
	n := min(int64(m.ChunkSize), written-off)
	bp, _ := s.bodies.Get().(*[]byte)
	if bp == nil {
		bp = new([]byte)
	}
	defer s.bodies.Put(bp)
	if int64(cap(*bp)) < 1+n+seal.Overhead {
		*bp = make([]byte, 0, 1+n+seal.Overhead)
	}
	body := (*bp)[:1+n]
	body[0] = 0
	if _, err := f.ReadAt(body[1:], off); err != nil {
		c.failErr(err)
		return
	}
	if last {
		body[0] = wire.FetchChunkFinal
	}
	// Sealed in place, after the flag.
	c.reply(http.StatusOK, stream.Seal(body[:1], i, last, body[1:]))
}

func saveJSON(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return writeFileAtomic(path, b)
}
