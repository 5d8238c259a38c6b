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
	"github.com/git-relay/git-relay/internal/payload"
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
	// Totals is the signed close of the upload (sizes, chunk count and
	// the bundle's hash), kept from the first complete request.
	Totals *wire.Totals `json:"totals,omitempty"`
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
// payload. A failure only costs the fast path at assembly.
func (ps *pushSession) writePlain(i uint32, plain []byte) bool {
	f, err := os.OpenFile(ps.partPath(), os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return false
	}
	_, err = f.WriteAt(plain, int64(i)*int64(ps.manifest.ChunkSize))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err == nil
}

func (ps *pushSession) partPath() string { return filepath.Join(ps.dir, "payload.part") }

// partHash is the running hash of a session's partial payload, kept in
// memory while its chunks arrive: the bundle's hash is then ready when
// the last chunk is. A restart loses it, and assembly reads the payload
// again.
type partHash struct {
	*payload.Prefix
	file *os.File
}

// partHashOf returns the session's running hash, starting it if need be.
func (s *Server) partHashOf(ps *pushSession) *partHash {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p, ok := s.partHashes[ps.id]; ok {
		return p
	}
	f, err := os.Open(ps.partPath())
	if err != nil {
		return nil
	}
	p := &partHash{Prefix: payload.NewPrefix(f, ps.manifest.ChunkSize), file: f}
	s.partHashes[ps.id] = p
	return p
}

// takePartHash forgets a session's running hash and returns it, if any.
func (s *Server) takePartHash(id string) *partHash {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.partHashes[id]
	delete(s.partHashes, id)
	if p != nil {
		p.file.Close()
	}
	return p
}

// finalPath holds the index of the chunk that opened as the final one.
func (ps *pushSession) finalPath() string { return filepath.Join(ps.dir, "final") }

// final returns the index of the final chunk, if it has arrived.
func (ps *pushSession) final() (uint32, bool) {
	b, err := os.ReadFile(ps.finalPath())
	if err != nil {
		return 0, false
	}
	n, err := strconv.ParseUint(string(b), 10, 32)
	return uint32(n), err == nil
}

func (ps *pushSession) stream(key keyring.Key) (*seal.Stream, error) {
	salt, err := hex.DecodeString(ps.manifest.Salt)
	if err != nil {
		return nil, err
	}
	return seal.New(key, keyring.LabelPushPayload, salt, wire.ManifestHash(ps.raw))
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
	var chunks uint32
	if ps.state.Totals != nil {
		chunks = ps.state.Totals.Chunks
	}
	return wire.PushStatus{
		Session: ps.id, Phase: ps.state.Phase, Held: ps.held(), Chunks: chunks,
		Message: ps.state.Message, Results: ps.state.Results, Timeline: ps.state.Timeline,
	}
}

// checkManifest validates a manifest before any work is done.
func (s *Server) checkManifest(c *call, m *wire.PushManifest) error {
	if m.Version != wire.PushManifestVersion {
		return badRequest("unsupported manifest version %d (this relay speaks %d: use the same git-relay release on both sides)", m.Version, wire.PushManifestVersion)
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
	if m.ChunkSize == 0 {
		return nil // a ref-only update
	}
	if m.ChunkSize < minChunkSize || int64(m.ChunkSize)+seal.Overhead > s.cfg.MaxBody {
		return &userError{http.StatusRequestEntityTooLarge, wire.CodeTooLarge, fmt.Sprintf("chunk size %d does not fit the server's --max-body %d (at least %d): set relay.maxBody to at most %d", m.ChunkSize, s.cfg.MaxBody, minChunkSize, s.cfg.MaxBody)}
	}
	return nil
}

// minChunkSize keeps the number of chunk files of a push reasonable: it
// is what the smallest relay.maxBody the helper takes (64 KiB) leaves.
const minChunkSize = 64<<10 - seal.Overhead

// checkTotals validates the close of an upload against the manifest and
// the chunks the session holds: every chunk up to the final one, and
// nothing after it.
func (s *Server) checkTotals(ps *pushSession, t *wire.Totals) error {
	m := ps.manifest
	if m.ChunkSize == 0 {
		if *t != (wire.Totals{}) {
			return badRequest("a ref-only update carries no payload")
		}
		return nil
	}
	if t.Compression != wire.CompressNone && t.Compression != wire.CompressZstd {
		return badRequest("unknown compression %q", t.Compression)
	}
	if t.PayloadSize < 0 || t.PayloadSize > s.cfg.MaxPushSize || t.BundleSize <= 0 || t.BundleSize > s.cfg.MaxPushSize {
		return &userError{http.StatusRequestEntityTooLarge, wire.CodeTooLarge, fmt.Sprintf("push of %d bytes is larger than this relay accepts (%d)", t.BundleSize, s.cfg.MaxPushSize)}
	}
	if t.Chunks == 0 || seal.Chunks(t.PayloadSize, m.ChunkSize) != t.Chunks {
		return badRequest("chunk count %d does not match %d bytes in chunks of %d", t.Chunks, t.PayloadSize, m.ChunkSize)
	}
	if h, err := hex.DecodeString(t.BundleHash); err != nil || len(h) != sha256.Size {
		return badRequest("bundle hash must be a hex SHA-256")
	}
	final, ok := ps.final()
	if !ok {
		return conflict("session %s has not received its final chunk", ps.id)
	}
	if final != t.Chunks-1 {
		return badRequest("the final chunk is chunk %d, not %d", final+1, t.Chunks)
	}
	held := ps.held()
	if uint32(len(held)) != t.Chunks || held[len(held)-1] != final {
		return conflict("session %s holds %d of %d chunks", ps.id, len(held), t.Chunks)
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
	s.log.Info("push session", "session", id, "repo", m.Repo, "refs", len(m.Updates), "payload", m.ChunkSize > 0)
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
	m := ps.manifest
	if m.ChunkSize == 0 {
		c.failErr(badRequest("session %s is a ref-only update and takes no chunks", ps.id))
		return
	}
	idx, err := strconv.ParseUint(q.Get("index"), 10, 32)
	if err != nil {
		c.failErr(badRequest("chunk index %q is not a number", q.Get("index")))
		return
	}
	if int64(idx)*int64(m.ChunkSize) >= s.cfg.MaxPushSize {
		c.failErr(&userError{http.StatusRequestEntityTooLarge, wire.CodeTooLarge, fmt.Sprintf("push is larger than this relay accepts (%d bytes)", s.cfg.MaxPushSize)})
		return
	}
	i, final := uint32(idx), q.Get("final") == "1"
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
	// Every chunk but the final one is full.
	full := int64(m.ChunkSize) + seal.Overhead
	if n := int64(len(c.body)); n < seal.Overhead || n > full || (!final && n != full) {
		c.failErr(badRequest("chunk %d: %d bytes, expected %d", i, n, full))
		return
	}
	if f, ok := ps.final(); ok && (i > f || (final && i != f)) {
		c.failErr(conflict("chunk %d: the final chunk of session %s is chunk %d", i, ps.id, f))
		return
	}
	st, err := ps.stream(c.key)
	if err != nil {
		c.failErr(err)
		return
	}
	bp, _ := s.bodies.Get().(*[]byte)
	if bp == nil {
		bp = new([]byte)
	}
	defer s.bodies.Put(bp)
	plain, err := st.Open((*bp)[:0], i, final, c.body)
	*bp = plain[:0]
	if err != nil {
		c.failErr(badRequest("%v: it was altered on the way or belongs to another push", err))
		return
	}
	if final {
		// Only a chunk that opened as the last one marks the end; the
		// marker is created once, so a second final chunk is a conflict.
		if err := createFileAtomic(ps.finalPath(), []byte(strconv.FormatUint(idx, 10))); err != nil {
			if f, ok := ps.final(); !ok || f != i {
				c.failErr(conflict("chunk %d: session %s already has its final chunk", i, ps.id))
				return
			}
		}
	}
	if err := writeFileAtomic(path, c.body); err != nil {
		c.failErr(err)
		return
	}
	// Keep the authenticated plaintext at its place too, hashed in order
	// as it arrives, so that assembling the bundle is a comparison rather
	// than a second decryption pass. The sealed chunk stays the durable
	// copy.
	kept := ps.writePlain(i, plain)
	if p := s.partHashOf(ps); p != nil {
		if kept {
			p.Add(i, plain)
		} else {
			p.Spoil()
		}
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
	var t wire.Totals
	if err := json.Unmarshal(c.body, &t); err != nil {
		c.failErr(badRequest("decode the push totals: %v", err))
		return
	}
	if ps.state.Totals != nil && *ps.state.Totals != t {
		c.failErr(conflict("session %s was completed with other totals", ps.id))
		return
	}
	if ps.state.Phase == wire.PhaseReceiving {
		if err := s.checkTotals(ps, &t); err != nil {
			c.failErr(err)
			return
		}
		ps.state.Totals = &t
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

// createFileAtomic writes data to path through a temporary file and
// links it into place, so that path appears whole and only once: it fails
// if path exists.
func createFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Link(tmp.Name(), path)
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
