package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/git-relay/git-relay/internal/keyring"
	"github.com/git-relay/git-relay/internal/payload"
	"github.com/git-relay/git-relay/internal/seal"
	"github.com/git-relay/git-relay/internal/upstream"
	"github.com/git-relay/git-relay/internal/wire"
)

// A fetch is a session too: the server builds a bundle of what the client
// wants minus what it has, seals it into chunks on disk, and the client
// downloads them one signed response at a time, resuming where it left off.

type fetchState struct {
	Phase   string    `json:"phase"` // preparing | ready | failed
	Message string    `json:"message,omitempty"`
	KeyID   string    `json:"keyId"`
	Created time.Time `json:"created"`
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
	if _, err := s.list(c.r.Context(), h); err != nil {
		c.failErr(err)
		return
	}
	id := newID()
	dir := s.fetchDir(id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		c.failErr(err)
		return
	}
	st := fetchState{Phase: "preparing", KeyID: c.key.ID, Created: time.Now().UTC()}
	if err := saveJSON(filepath.Join(dir, "state.json"), st); err != nil {
		c.failErr(err)
		return
	}
	s.work.Add(1)
	done := make(chan struct{})
	s.mu.Lock()
	s.running["fetch-"+id] = done
	s.mu.Unlock()
	go func() {
		defer s.work.Done()
		defer func() {
			s.mu.Lock()
			delete(s.running, "fetch-"+id)
			s.mu.Unlock()
			close(done)
		}()
		raw, err := s.prepareFetch(context.Background(), h, id, c.key, req, maxBody)
		if err != nil {
			st.Phase, st.Message = "failed", s.redactor(err.Error())
			s.log.Warn("fetch failed", "session", id, "repo", req.Repo, "err", st.Message)
		} else {
			if err := writeFileAtomic(filepath.Join(dir, "manifest.json"), raw); err != nil {
				st.Phase, st.Message = "failed", err.Error()
			} else {
				st.Phase = "ready"
			}
		}
		_ = saveJSON(filepath.Join(dir, "state.json"), st)
	}()
	c.reply(http.StatusOK, wire.Session{Session: id})
}

// prepareFetch builds the bundle (compressed when that pays) that the
// chunks are sealed from on demand, and returns the manifest's bytes.
func (s *Server) prepareFetch(ctx context.Context, h *repoHandle, id string, key keyring.Key, req wire.FetchRequest, maxBody int64) ([]byte, error) {
	unlock := s.repoLocks.lock(h.name)
	refs, err := s.list(ctx, h)
	if err == nil {
		err = s.refresh(ctx, h, refs)
	}
	if err != nil {
		unlock()
		return nil, err
	}
	dir := s.fetchDir(id)
	p, err := s.bundleFor(ctx, h, id, req, refs, dir)
	unlock()
	if err != nil {
		return nil, err
	}
	salt := make([]byte, 32)
	if _, err := rand.Read(salt); err != nil {
		return nil, err
	}
	m := wire.FetchManifest{Version: 1, Session: id, Repo: req.Repo, Salt: hex.EncodeToString(salt), Compression: wire.CompressNone}
	if p == nil {
		return json.Marshal(m)
	}
	// Keep only what is sealed: the bundle, or its compressed copy.
	if err := os.Rename(p.Path, filepath.Join(dir, "payload")); err != nil {
		return nil, err
	}
	os.Remove(filepath.Join(dir, "fetch.bundle"))
	m.Compression, m.BundleSize, m.BundleHash, m.PayloadSize = p.Compression, p.BundleSize, p.BundleHash, p.PayloadSize
	m.ChunkSize = payload.ChunkSize(maxBody)
	m.Chunks = seal.Chunks(p.PayloadSize, m.ChunkSize)
	return json.Marshal(m)
}

// bundleFor writes a bundle of req.Wants minus everything reachable from
// the haves that the mirror knows, hashing it as git writes it. It returns
// nil when the client already has everything.
func (s *Server) bundleFor(ctx context.Context, h *repoHandle, id string, req wire.FetchRequest, refs *upstream.Refs, dir string) (*payload.Payload, error) {
	var check strings.Builder
	for _, w := range req.Wants {
		check.WriteString(w + "\n")
	}
	for _, hv := range req.Haves {
		check.WriteString(hv + "\n")
	}
	out, err := h.mirror.RunInput(ctx, strings.NewReader(check.String()), "cat-file", "--batch-check=%(objectname) %(objecttype)")
	if err != nil {
		return nil, err
	}
	known := map[string]bool{}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[1] != "missing" {
			known[f[0]] = true
		}
	}
	for _, w := range req.Wants {
		if !known[w] {
			return nil, notFound("upstream %s has no object %s (it may have moved: fetch again)", h.name, w)
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
		return nil, err
	}
	if strings.TrimSpace(missing) == "" {
		return nil, nil
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
	if tmp.Len() > 0 {
		if _, err := h.mirror.RunInput(ctx, strings.NewReader(tmp.String()), "update-ref", "--stdin"); err != nil {
			return nil, err
		}
		defer h.mirror.RunInput(context.Background(), strings.NewReader(del.String()), "update-ref", "--stdin")
	}
	revs.WriteString(not.String())
	c := h.mirror.Command(ctx, "bundle", "create", "-q", "-", "--stdin")
	c.Stdin = strings.NewReader(revs.String())
	stdout, err := c.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := c.Start(); err != nil {
		return nil, err
	}
	p, perr := payload.Spool(stdout, filepath.Join(dir, "fetch.bundle"), dir)
	if perr != nil {
		io.Copy(io.Discard, stdout)
	}
	if err := c.Wait(); err != nil {
		if p != nil {
			p.Close()
		}
		return nil, fmt.Errorf("create bundle: %w", err)
	}
	return p, perr
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

func (s *Server) handleFetchStatus(c *call) {
	st, dir, err := s.loadFetch(c.r.URL.Query().Get("session"), c.key)
	if err != nil {
		c.failErr(err)
		return
	}
	if st.Phase == "preparing" && c.r.URL.Query().Get("wait") != "" {
		s.waitApply(c.r.Context(), "fetch-"+c.r.URL.Query().Get("session"), longPoll)
		if st, dir, err = s.loadFetch(c.r.URL.Query().Get("session"), c.key); err != nil {
			c.failErr(err)
			return
		}
	}
	out := wire.FetchStatus{Phase: st.Phase, Message: st.Message}
	if st.Phase == "ready" {
		raw, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
		if err != nil {
			c.failErr(err)
			return
		}
		out.Ready, out.Manifest = true, raw
	}
	c.reply(http.StatusOK, out)
}

func (s *Server) handleFetchChunk(c *call) {
	q := c.r.URL.Query()
	st, dir, err := s.loadFetch(q.Get("session"), c.key)
	if err != nil {
		c.failErr(err)
		return
	}
	if st.Phase != "ready" {
		c.failErr(conflict("fetch session is %s", st.Phase))
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
	idx, err := strconv.ParseUint(q.Get("index"), 10, 32)
	if err != nil || uint32(idx) >= m.Chunks {
		c.failErr(badRequest("chunk index %q out of range", q.Get("index")))
		return
	}
	// Chunks are sealed on demand from the payload: the same bytes every
	// time (the key, nonce and associated data are fixed by the manifest
	// and the index), so a download can be resumed or repeated.
	salt, _ := hex.DecodeString(m.Salt)
	stream, err := seal.New(c.key, keyring.LabelFetchPayload, salt, wire.ManifestHash(raw))
	if err != nil {
		c.failErr(err)
		return
	}
	f, err := os.Open(filepath.Join(dir, "payload"))
	if err != nil {
		c.failErr(notFound("fetch session %s has no payload (it may have expired)", q.Get("session")))
		return
	}
	defer f.Close()
	off := int64(idx) * int64(m.ChunkSize)
	n := min(int64(m.ChunkSize), m.PayloadSize-off)
	plain := make([]byte, n, n+seal.Overhead) // sealed in place
	if _, err := f.ReadAt(plain, off); err != nil {
		c.failErr(err)
		return
	}
	c.reply(http.StatusOK, stream.Seal(plain[:0], uint32(idx), uint32(idx) == m.Chunks-1, plain))
}

func saveJSON(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return writeFileAtomic(path, b)
}
