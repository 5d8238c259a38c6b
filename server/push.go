package server

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"time"

	"github.com/git-relay/git-relay/internal/keyring"
	"github.com/git-relay/git-relay/internal/seal"
	"github.com/git-relay/git-relay/internal/wire"
)

// pushState is what the server remembers of a push session. It is written
// with writeFileAtomic at every phase change, so a restart finds each
// session where it was.
type pushState struct {
	Phase   string           `json:"phase"`
	Message string           `json:"message,omitempty"`
	Results []wire.RefResult `json:"results,omitempty"`
	// Timeline lists the phases with when each began, for the helper to
	// show even when it learns of them only at the end.
	Timeline []wire.PhaseTime `json:"timeline,omitempty"`
	KeyID    string           `json:"keyId"`
	Created  time.Time        `json:"created"`
	Updated  time.Time        `json:"updated"`
}

type pushSession struct {
	id       string
	dir      string
	raw      []byte // the manifest's exact bytes
	manifest wire.PushManifest
	state    pushState
}

func (s *Server) sessionDir(id string) string { return filepath.Join(s.cfg.DataDir, "sessions", id) }

func newID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// loadPush reads a session; the key that reads it must be the key that
// made it.
func (s *Server) loadPush(id string, key keyring.Key) (*pushSession, error) {
	if !sessRE.MatchString(id) {
		return nil, badRequest("invalid session id")
	}
	ps, err := s.readPush(id)
	if err != nil {
		return nil, err
	}
	if ps.state.KeyID != key.ID {
		return nil, notFound("no such session %s", id)
	}
	return ps, nil
}

func (s *Server) readPush(id string) (*pushSession, error) {
	dir := s.sessionDir(id)
	raw, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return nil, notFound("no such session %s (it may have expired)", id)
	}
	ps := &pushSession{id: id, dir: dir, raw: raw}
	if err := json.Unmarshal(raw, &ps.manifest); err != nil {
		return nil, fmt.Errorf("session %s: %w", id, err)
	}
	st, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		return nil, fmt.Errorf("session %s: %w", id, err)
	}
	if err := json.Unmarshal(st, &ps.state); err != nil {
		return nil, fmt.Errorf("session %s: %w", id, err)
	}
	return ps, nil
}

// enter moves the session to phase (the caller saves it).
func (ps *pushSession) enter(phase string) {
	ps.state.Phase = phase
	ps.state.Timeline = append(ps.state.Timeline, wire.PhaseTime{Phase: phase, At: time.Now().UTC()})
}

func (ps *pushSession) save() error {
	ps.state.Updated = time.Now().UTC()
	b, err := json.Marshal(ps.state)
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(ps.dir, "state.json"), b)
}

func (ps *pushSession) chunkPath(i uint32) string {
	return filepath.Join(ps.dir, "chunks", fmt.Sprintf("%08d", i))
}

// writePlain puts chunk i's plaintext at its offset in the partial
// bundle. A failure only costs the fast path at assembly.
func (ps *pushSession) writePlain(i uint32, plain []byte) {
	f, err := os.OpenFile(filepath.Join(ps.dir, "bundle.part"), os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return
	}
	defer f.Close()
	_, _ = f.WriteAt(plain, int64(i)*int64(ps.manifest.ChunkSize))
}

// expectedLen is the exact sealed size of chunk i.
func (ps *pushSession) expectedLen(i uint32) int64 {
	m := ps.manifest
	if i < m.Chunks-1 {
		return int64(m.ChunkSize) + seal.Overhead
	}
	return m.PayloadSize - int64(m.ChunkSize)*int64(m.Chunks-1) + seal.Overhead
}

func (ps *pushSession) stream(key keyring.Key) (*seal.Stream, error) {
	salt, err := hex.DecodeString(ps.manifest.Salt)
	if err != nil {
		return nil, err
	}
	return seal.New(key, keyring.LabelPushPayload, salt, wire.ManifestHash(ps.raw), ps.manifest.Chunks)
}

func (ps *pushSession) held() []uint32 {
	entries, _ := os.ReadDir(filepath.Join(ps.dir, "chunks"))
	held := []uint32{}
	for _, e := range entries {
		n, err := strconv.ParseUint(e.Name(), 10, 32)
		if err == nil && len(e.Name()) == 8 {
			held = append(held, uint32(n))
		}
	}
	sort.Slice(held, func(a, b int) bool { return held[a] < held[b] })
	return held
}

func (ps *pushSession) status() wire.PushStatus {
	return wire.PushStatus{
		Session: ps.id, Phase: ps.state.Phase, Held: ps.held(), Chunks: ps.manifest.Chunks,
		Message: ps.state.Message, Results: ps.state.Results, Timeline: ps.state.Timeline,
	}
}

// checkManifest validates a manifest before any work is done.
func (s *Server) checkManifest(c *call, m *wire.PushManifest) error {
	if m.Version != 1 {
		return badRequest("unsupported manifest version %d (upgrade git-relay)", m.Version)
	}
	if err := validRepo(m.Repo); err != nil {
		return err
	}
	if len(m.Updates) == 0 || len(m.Updates) > 1000 {
		return badRequest("a push updates 1 to 1000 refs, not %d", len(m.Updates))
	}
	seen := map[string]bool{}
	for _, u := range m.Updates {
		if err := validRef(c.r.Context(), u.Ref); err != nil {
			return err
		}
		if seen[u.Ref] {
			return badRequest("ref %s appears twice", u.Ref)
		}
		seen[u.Ref] = true
		if !validOID(u.Old) || !validOID(u.New) {
			return badRequest("ref %s: old and new must be 40-hex object ids", u.Ref)
		}
		if u.Old == u.New {
			return badRequest("ref %s: nothing to update", u.Ref)
		}
		if u.Force && !s.cfg.AllowForce {
			return &userError{http.StatusForbidden, wire.CodeForbidden, fmt.Sprintf("ref %s: forced pushes are refused by this relay (the server runs without --allow-force)", u.Ref)}
		}
	}
	if len(m.Options) > 100 {
		return badRequest("too many push options")
	}
	if salt, err := hex.DecodeString(m.Salt); err != nil || len(salt) != 32 {
		return badRequest("manifest salt must be 32 bytes in hex")
	}
	if m.Compression != wire.CompressNone && m.Compression != wire.CompressZstd {
		return badRequest("unknown compression %q", m.Compression)
	}
	if m.Chunks == 0 {
		if m.BundleSize != 0 || m.PayloadSize != 0 {
			return badRequest("a ref-only update carries no payload")
		}
		return nil
	}
	if m.PayloadSize <= 0 || m.PayloadSize > s.cfg.MaxPushSize || m.BundleSize <= 0 || m.BundleSize > s.cfg.MaxPushSize {
		return &userError{http.StatusRequestEntityTooLarge, wire.CodeTooLarge, fmt.Sprintf("push of %d bytes is larger than this relay accepts (%d)", m.PayloadSize, s.cfg.MaxPushSize)}
	}
	if m.ChunkSize <= 0 || int64(m.ChunkSize)+seal.Overhead > s.cfg.MaxBody {
		return &userError{http.StatusRequestEntityTooLarge, wire.CodeTooLarge, fmt.Sprintf("chunk size %d exceeds the server's --max-body %d: lower relay.maxBody", m.ChunkSize, s.cfg.MaxBody)}
	}
	if seal.Chunks(m.PayloadSize, m.ChunkSize) != m.Chunks {
		return badRequest("chunk count %d does not match %d bytes in chunks of %d", m.Chunks, m.PayloadSize, m.ChunkSize)
	}
	if h, err := hex.DecodeString(m.BundleHash); err != nil || len(h) != sha256.Size {
		return badRequest("bundle hash must be a hex SHA-256")
	}
	return nil
}

func (s *Server) handlePushCreate(c *call) {
	var m wire.PushManifest
	if err := json.Unmarshal(c.body, &m); err != nil {
		c.failErr(badRequest("decode manifest: %v", err))
		return
	}
	if err := s.checkManifest(c, &m); err != nil {
		c.failErr(err)
		return
	}
	if n := s.activeSessions(c.key.ID); n >= s.cfg.MaxSessions {
		c.failErr(&userError{http.StatusTooManyRequests, wire.CodeTooLarge, fmt.Sprintf("too many unfinished pushes for this key (%d); wait or let them expire", n)})
		return
	}
	id := newID()
	dir := s.sessionDir(id)
	if err := os.MkdirAll(filepath.Join(dir, "chunks"), 0o700); err != nil {
		c.failErr(err)
		return
	}
	ps := &pushSession{id: id, dir: dir, raw: c.body, manifest: m,
		state: pushState{KeyID: c.key.ID, Created: time.Now().UTC()}}
	ps.enter(wire.PhaseReceiving)
	if err := writeFileAtomic(filepath.Join(dir, "manifest.json"), c.body); err != nil {
		c.failErr(err)
		return
	}
	if err := ps.save(); err != nil {
		c.failErr(err)
		return
	}
	s.log.Info("push session", "session", id, "repo", m.Repo, "refs", len(m.Updates), "chunks", m.Chunks, "bytes", m.PayloadSize)
	c.reply(http.StatusOK, wire.Session{Session: id})
}

func (s *Server) activeSessions(keyID string) int {
	entries, _ := os.ReadDir(filepath.Join(s.cfg.DataDir, "sessions"))
	n := 0
	for _, e := range entries {
		ps, err := s.readPush(e.Name())
		if err == nil && ps.state.KeyID == keyID && ps.state.Phase == wire.PhaseReceiving {
			n++
		}
	}
	return n
}

// handlePushChunk stores one sealed chunk. It is idempotent: the same bytes
// at the same index succeed again, different bytes are a conflict. Each
// chunk is authenticated on arrival, so a chunk altered on the way is
// refused at once, naming its index; its plaintext is not kept.
func (s *Server) handlePushChunk(c *call) {
	q := c.r.URL.Query()
	ps, err := s.loadPush(q.Get("session"), c.key)
	if err != nil {
		c.failErr(err)
		return
	}
	idx, err := strconv.ParseUint(q.Get("index"), 10, 32)
	if err != nil || uint32(idx) >= ps.manifest.Chunks {
		c.failErr(badRequest("chunk index %q out of range (0..%d)", q.Get("index"), int64(ps.manifest.Chunks)-1))
		return
	}
	i := uint32(idx)
	path := ps.chunkPath(i)
	if old, err := os.ReadFile(path); err == nil {
		if bytes.Equal(old, c.body) {
			c.reply(http.StatusOK, ps.status())
			return
		}
		c.failErr(conflict("chunk %d already holds different bytes", i))
		return
	}
	if ps.state.Phase != wire.PhaseReceiving {
		c.failErr(conflict("session %s is %s and takes no more chunks", ps.id, ps.state.Phase))
		return
	}
	if int64(len(c.body)) != ps.expectedLen(i) {
		c.failErr(badRequest("chunk %d: %d bytes, expected %d", i, len(c.body), ps.expectedLen(i)))
		return
	}
	st, err := ps.stream(c.key)
	if err != nil {
		c.failErr(err)
		return
	}
	plain, err := st.Open(nil, i, c.body)
	if err != nil {
		c.failErr(badRequest("%v: it was altered on the way or belongs to another push", err))
		return
	}
	if err := writeFileAtomic(path, c.body); err != nil {
		c.failErr(err)
		return
	}
	if ps.manifest.Compression == wire.CompressNone {
		// Keep the authenticated plaintext at its place too, so that
		// assembling the bundle is a hash check rather than a second
		// decryption pass. The sealed chunk stays the durable copy.
		ps.writePlain(i, plain)
	}
	c.reply(http.StatusOK, ps.status())
}

// longPoll is how long complete and status wait for a push to finish
// before answering with its current phase: long enough for most pushes to
// finish in one round trip, well below a serverless proxy's time limit.
const longPoll = 5 * time.Second

func (s *Server) handlePushStatus(c *call) {
	ps, err := s.loadPush(c.r.URL.Query().Get("session"), c.key)
	if err != nil {
		c.failErr(err)
		return
	}
	if c.r.URL.Query().Get("wait") != "" {
		s.waitApply(c.r.Context(), ps.id, longPoll)
		if ps, err = s.readPush(ps.id); err != nil {
			c.failErr(err)
			return
		}
	}
	c.reply(http.StatusOK, ps.status())
}

// handlePushComplete starts applying a push whose chunks are all in. It is
// idempotent: asking again reports the current state.
func (s *Server) handlePushComplete(c *call) {
	ps, err := s.loadPush(c.r.URL.Query().Get("session"), c.key)
	if err != nil {
		c.failErr(err)
		return
	}
	if ps.state.Phase == wire.PhaseReceiving {
		if held := ps.held(); uint32(len(held)) != ps.manifest.Chunks {
			c.failErr(conflict("session %s holds %d of %d chunks", ps.id, len(held), ps.manifest.Chunks))
			return
		}
		ps.enter(wire.PhaseProcessing)
		if err := ps.save(); err != nil {
			c.failErr(err)
			return
		}
	}
	if ps.state.Phase == wire.PhaseProcessing || ps.state.Phase == wire.PhasePushing {
		s.startApply(ps.id)
		s.waitApply(c.r.Context(), ps.id, longPoll)
		if ps, err = s.readPush(ps.id); err != nil {
			c.failErr(err)
			return
		}
	}
	c.reply(http.StatusOK, ps.status())
}

// writeFileAtomic writes through a temporary file, fsyncs, and renames, so
// a crash leaves the old content or the new, never a torn file.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
