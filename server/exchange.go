package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/git-relay/git-relay/internal/keyring"
	"github.com/git-relay/git-relay/internal/payload"
	"github.com/git-relay/git-relay/internal/seal"
	"github.com/git-relay/git-relay/internal/store"
	"github.com/git-relay/git-relay/internal/wire"
)

// Exchanges live in the store, so that any instance can take any of their
// requests and a restart loses nothing. Per exchange id:
//
//	st/<id>        its state (JSON), changed only by compare-and-swap
//	up/<id>/<n>    upload chunk n as it opened on arrival: the plaintext,
//	               then a flag byte (1 on the final chunk)
//	up/<id>/final  the index of the final upload chunk, created once
//	dn/<id>/<n>    download chunk n: the plaintext, then the flag byte
//
// Chunks keep their plaintext (the relay's own storage holds plaintext
// anyway, in its mirrors): a chunk is authenticated once, when it
// arrives, and a download chunk is sealed when it is asked for, always
// to the same bytes.
//
// An exchange whose whole answer fits in the reply to its Open (a ref
// listing, a negotiation round, a small push's outcome) is not written to
// the store at all unless it must be: its client opens it again under the
// same id if the answer is lost, and it runs again.

// state is what the store keeps of an exchange.
type state struct {
	V        int              `json:"v"`
	Kind     string           `json:"kind"`
	KeyID    string           `json:"keyId"`
	Repo     string           `json:"repo"`
	Open     []byte           `json:"open"` // the Open message's exact bytes
	Phase    string           `json:"phase"`
	Message  string           `json:"message,omitempty"`
	Code     string           `json:"code,omitempty"`
	Results  []wire.RefResult `json:"results,omitempty"`
	Timeline []wire.PhaseTime `json:"timeline,omitempty"`
	Down     *wire.Down       `json:"down,omitempty"`
	Created  time.Time        `json:"created"`
	Updated  time.Time        `json:"updated"`
	// Owner is the instance doing the exchange's work, until Lease.
	Owner string    `json:"owner,omitempty"`
	Lease time.Time `json:"lease,omitzero"`
}

const stateVersion = 1

// leaseTTL is how long an instance's claim on an exchange's work lasts
// without renewal; another instance takes the work over after that.
const leaseTTL = 20 * time.Second

func stateKey(id string) string          { return "st/" + id }
func upKey(id string, i uint32) string   { return fmt.Sprintf("up/%s/%010d", id, i) }
func upFinalKey(id string) string        { return "up/" + id + "/final" }
func downKey(id string, i uint32) string { return fmt.Sprintf("dn/%s/%010d", id, i) }
func chunkPrefixes(id string) []string   { return []string{"up/" + id + "/", "dn/" + id + "/"} }

func parseIndex(s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	return uint32(n), err
}

// flagOf is the byte kept after a chunk's plaintext: 1 on the final chunk.
func flagOf(final bool) byte {
	if final {
		return 1
	}
	return 0
}

// splitFlag takes a kept chunk apart.
func splitFlag(obj []byte) ([]byte, bool) { return obj[:len(obj)-1], obj[len(obj)-1] == 1 }

func randomSalt() []byte {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return b
}

func hexSalt(s string) ([]byte, error) { return hex.DecodeString(s) }

// exch is an exchange this instance has in hand.
type exch struct {
	id      string
	key     keyring.Key
	open    wire.Open
	openRaw []byte
	up      *seal.Stream

	mu        sync.Mutex
	st        state
	etag      store.ETag
	persisted bool
	changed   chan struct{} // closed, and replaced, at every change
	working   bool          // this instance runs the exchange's work
	applying  bool          // a push is being applied upstream: shutdown waits
	cancelled bool          // its client cancelled it: it must not start applying
	cancel    context.CancelFunc
	inline    []byte // an inline upload's payload
	down      downProgress
	seen      time.Time     // the last request for it here began or ended
	busy      int           // its requests in progress here
	followed  bool          // see Server.follow
	admitted  chan struct{} // closed once the mirror has read the pushed pack from the chunks (admitLater)
	// The upload chunks handed to this instance's push as they come
	// (handOff), and the one that push reads next, while it reads.
	fresh   map[uint32]freshChunk
	reading bool
	wantUp  uint32
}

// freshChunk is an authenticated upload chunk on its way to the store:
// its plaintext, in the request body's buffer, which the push shares.
type freshChunk struct {
	plain []byte
	buf   *sharedBuf
	final bool
}

// volatile says whether the exchange's state may go to the store without
// waiting for the disk. An inline upload's may: its payload lives in
// memory only, so that after a crash of the machine its client sends it
// again in any case, and the push that runs again from it lands once
// (upstream's compare-and-swap) and reports what it finds upstream.
func (e *exch) volatile() bool { return e.open.Inline }

// use marks a request for the exchange as in progress, until the
// returned function is called: an exchange with a request in progress is
// never pushed out as idle.
func (e *exch) use() func() {
	e.mu.Lock()
	e.busy++
	e.seen = time.Now()
	e.mu.Unlock()
	return func() {
		e.mu.Lock()
		e.busy--
		e.seen = time.Now()
		e.mu.Unlock()
	}
}

// downProgress is the answer as this instance writes it.
type downProgress struct {
	inline []byte // the whole payload, when it goes in the reply
	stream *seal.Stream
	chunks uint32
	final  bool
}

func (e *exch) notify() {
	close(e.changed)
	e.changed = make(chan struct{})
}

// snapshot returns the state and the channel that closes at its next
// change.
func (e *exch) snapshot() (state, chan struct{}) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.st, e.changed
}

// newExch builds an exchange from its Open bytes.
func newExch(key keyring.Key, raw []byte, o wire.Open) (*exch, error) {
	salt, err := hexSalt(o.Salt)
	if err != nil || len(salt) != 32 {
		return nil, badRequest("the exchange's salt must be 32 bytes in hex")
	}
	up, err := seal.New(key, keyring.LabelUpload, salt, wire.Hash(raw))
	if err != nil {
		return nil, err
	}
	return &exch{id: o.ID, key: key, open: o, openRaw: raw, up: up, changed: make(chan struct{}), seen: time.Now()}, nil
}

// exchange finds an exchange by id for the key that made it.
func (s *Server) exchange(ctx context.Context, id string, key keyring.Key) (*exch, error) {
	if !wire.ValidID(id) {
		return nil, badRequest("invalid exchange id")
	}
	s.mu.Lock()
	e, ok := s.live[id]
	s.mu.Unlock()
	if ok {
		if e.key.ID != key.ID {
			return nil, notFound("no such exchange %s", id)
		}
		e.mu.Lock()
		e.seen = time.Now()
		e.mu.Unlock()
		return e, nil
	}
	st, etag, err := s.loadState(ctx, id)
	if err != nil {
		return nil, err
	}
	if st.KeyID != key.ID {
		return nil, notFound("no such exchange %s", id)
	}
	var o wire.Open
	if err := json.Unmarshal(st.Open, &o); err != nil {
		return nil, fmt.Errorf("exchange %s: %w", id, err)
	}
	e, err = newExch(key, st.Open, o)
	if err != nil {
		return nil, err
	}
	e.st, e.etag, e.persisted = *st, etag, true
	s.mu.Lock()
	if other, ok := s.live[id]; ok {
		e = other
	} else {
		s.live[id] = e
	}
	s.mu.Unlock()
	return e, nil
}

func (s *Server) loadState(ctx context.Context, id string) (*state, store.ETag, error) {
	b, etag, err := s.store.Get(ctx, stateKey(id), nil)
	if errors.Is(err, store.ErrNotFound) {
		return nil, "", notFound("no such exchange %s (it may have expired)", id)
	}
	if err != nil {
		return nil, "", err
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, "", fmt.Errorf("exchange %s: %w", id, err)
	}
	return &st, etag, nil
}

// persist writes a new exchange's state to the store, once.
func (s *Server) persist(ctx context.Context, e *exch) error {
	_, err := s.persistWith(ctx, e, nil)
	return err
}

// persistWith is persist with f applied to the state that goes to the
// store, in the same write; it says whether it wrote (false: the exchange
// was kept already, and f was not applied).
func (s *Server) persistWith(ctx context.Context, e *exch, f func(*state) error) (bool, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.persisted {
		return false, nil
	}
	next := e.st
	if f != nil {
		if err := f(&next); err != nil {
			return false, err
		}
	}
	next.Updated = time.Now().UTC()
	if next.Owner == s.instance {
		// Kept late (an answer slower than a long-poll): the lease taken
		// when it opened may have run out meanwhile.
		next.Lease = next.Updated.Add(leaseTTL)
	}
	b, err := json.Marshal(next)
	if err != nil {
		return false, err
	}
	// Kept without waiting for the disk: a crash of the machine that
	// loses it loses an exchange that had only opened (its client opens
	// it again, and finds the chunks it sent, which are kept durably), or
	// an answer's terms (its client asks again). Waiting here cost a push
	// tens of milliseconds when the disk was busy writing back an earlier
	// push's pack.
	etag, err := s.store.Put(ctx, stateKey(e.id), b, store.PutOptions{IfNoneMatch: true, Volatile: true})
	if err != nil {
		return false, fmt.Errorf("keep exchange %s: %w", e.id, err)
	}
	e.st, e.etag, e.persisted = next, etag, true
	if f != nil {
		e.notify()
	}
	return true, nil
}

// update changes an exchange's state: in memory, and in the store by
// compare-and-swap when it is kept there (reloading and applying f again
// when another instance changed it meanwhile). f may refuse the change.
func (s *Server) update(ctx context.Context, e *exch, f func(*state) error) error {
	return s.change(ctx, e, false, f)
}

// change is update; a volatile change is kept in the store without
// waiting for the disk (see store.PutOptions).
func (s *Server) change(ctx context.Context, e *exch, volatile bool, f func(*state) error) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	for attempt := 0; ; attempt++ {
		// A deep enough copy: readers hold snapshots of the state.
		next := e.st
		next.Timeline = append([]wire.PhaseTime(nil), e.st.Timeline...)
		if e.st.Down != nil {
			d := *e.st.Down
			next.Down = &d
		}
		if err := f(&next); err != nil {
			return err
		}
		next.Updated = time.Now().UTC()
		if !e.persisted {
			e.st = next
			e.notify()
			return nil
		}
		b, err := json.Marshal(next)
		if err != nil {
			return err
		}
		etag, err := s.store.Put(ctx, stateKey(e.id), b, store.PutOptions{IfMatch: e.etag, Volatile: volatile || e.volatile()})
		if err == nil {
			e.st, e.etag = next, etag
			e.notify()
			return nil
		}
		if !errors.Is(err, store.ErrPrecondition) || attempt > 20 {
			return fmt.Errorf("update exchange %s: %w", e.id, err)
		}
		st, etag, err := s.loadState(ctx, e.id)
		if err != nil {
			return err
		}
		e.st, e.etag = *st, etag
	}
}

// reload reads the state again, for an exchange another instance works on.
func (s *Server) reload(ctx context.Context, e *exch) error {
	e.mu.Lock()
	persisted := e.persisted
	e.mu.Unlock()
	if !persisted {
		return nil
	}
	st, etag, err := s.loadState(ctx, e.id)
	if err != nil {
		return err
	}
	e.mu.Lock()
	if etag != e.etag {
		e.st, e.etag = *st, etag
		e.notify()
	}
	e.mu.Unlock()
	return nil
}

// enter moves the exchange to phase. A phase is progress to report, and
// is kept without waiting for the disk: a crash of the machine that loses
// it leaves the push in an earlier phase, from which it runs again, and
// the compare-and-swap on the old ids keeps it from landing twice.
func (s *Server) enter(ctx context.Context, e *exch, phase string) error {
	return s.change(ctx, e, true, func(st *state) error {
		if wire.Ended(st.Phase) {
			return errEnded
		}
		st.Phase = phase
		st.Timeline = append(st.Timeline, wire.PhaseTime{Phase: phase, At: time.Now().UTC()})
		return nil
	})
}

var errEnded = errors.New("the exchange has ended")

// wait waits until ok holds, d passes or ctx ends. Changes made here wake
// it at once; changes another instance makes are seen by reading the
// store again every so often.
func (s *Server) wait(ctx context.Context, e *exch, d time.Duration, ok func(st state) bool) {
	t := time.NewTimer(d)
	defer t.Stop()
	// The store is read again soon at first, then less often: what the
	// client waits for (the next chunk of an answer another instance is
	// writing) usually comes within milliseconds.
	every := 20 * time.Millisecond
	poll := time.NewTimer(every)
	defer poll.Stop()
	for {
		st, changed := e.snapshot()
		if ok(st) {
			return
		}
		select {
		case <-changed:
		case <-poll.C:
			every = min(2*every, 200*time.Millisecond)
			poll.Reset(every)
			e.mu.Lock()
			local := e.working
			e.mu.Unlock()
			if !local {
				if err := s.reload(ctx, e); err != nil {
					return
				}
				s.maybeTakeOver(e)
			}
		case <-t.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// status is the exchange's status for its client.
func (s *Server) status(ctx context.Context, e *exch, held bool) wire.Status {
	st, _ := e.snapshot()
	out := wire.Status{ID: e.id, Phase: st.Phase, Message: st.Message, Code: st.Code, Results: st.Results, Timeline: st.Timeline, Down: st.Down,
		UpFirst: e.open.Kind == wire.KindRefs && e.open.Push}
	if held && e.open.ChunkSize > 0 {
		_ = s.store.List(ctx, "up/"+e.id+"/", func(i store.Info) error {
			if n, err := parseIndex(i.Key[strings.LastIndexByte(i.Key, '/')+1:]); err == nil {
				out.Held = append(out.Held, n)
			}
			return nil
		})
	}
	return out
}

// checkOpen validates an Open before anything is done for it.
func (s *Server) checkOpen(o *wire.Open, tail bool) error {
	if o.V != wire.Version {
		return badRequest("this relay speaks protocol version %d, the client %d: use the same git-relay release on both sides", wire.Version, o.V)
	}
	if !wire.ValidID(o.ID) {
		return badRequest("invalid exchange id")
	}
	switch o.Kind {
	case wire.KindPush, wire.KindRefs, wire.KindCaps, wire.KindFetch:
	default:
		return badRequest("unknown exchange kind %q", o.Kind)
	}
	if err := validRepo(o.Repo); err != nil {
		return err
	}
	if o.Follows != "" && (o.Kind != wire.KindFetch || !wire.ValidID(o.Follows)) {
		return badRequest("invalid follows: a fetch exchange may name the exchange id it follows")
	}
	if o.MaxBody < wire.MinMaxBody {
		return badRequest("maxBody %d is below the smallest body cap (%d)", o.MaxBody, wire.MinMaxBody)
	}
	if tail && !o.Inline && !o.First || o.Inline && !tail {
		return badRequest("the Open message and its body disagree about an inline upload")
	}
	hasUpload := o.Kind == wire.KindPush || o.Kind == wire.KindFetch
	switch {
	case !hasUpload && (o.Inline || o.ChunkSize != 0):
		return badRequest("a %s exchange uploads nothing", o.Kind)
	case hasUpload && !o.Inline && o.ChunkSize == 0:
		return badRequest("a %s exchange needs an upload", o.Kind)
	case o.Inline && o.ChunkSize != 0:
		return badRequest("an inline upload has no chunk size")
	case o.First && o.ChunkSize == 0:
		return badRequest("only a chunked upload sends its first chunk with the Open")
	}
	if o.ChunkSize != 0 {
		// No sum of client numbers: a chunk size near the top of the int
		// range would wrap it.
		if int64(o.ChunkSize) < int64(wire.MinMaxBody)-seal.Overhead || int64(o.ChunkSize) > s.cfg.MaxBody-seal.Overhead {
			return tooLarge("chunk size %d does not fit the server's --max-body %d: set relay.maxBody to at most %d", o.ChunkSize, s.cfg.MaxBody, s.cfg.MaxBody)
		}
	}
	return nil
}

// handleOpen opens an exchange, or finds the one already open under the
// same id: a client whose answer was lost opens it again and gets the
// same exchange, never a second one.
func (s *Server) handleOpen(c *call) {
	ctx := c.r.Context()
	js, tail, err := wire.OpenRequest(c.key, c.auth, c.r.Method, c.path, c.r.URL.Query(), c.body)
	if err != nil {
		c.failErr(badRequest("open: %v", err))
		return
	}
	var o wire.Open
	if err := json.Unmarshal(js, &o); err != nil {
		c.failErr(badRequest("open: %v", err))
		return
	}
	if err := s.checkOpen(&o, len(tail) > 0); err != nil {
		c.failErr(err)
		return
	}
	raw := append([]byte(nil), js...)
	e, existed, err := s.openExchange(ctx, c.key, raw, o)
	if err != nil {
		c.failErr(err)
		return
	}
	defer e.use()()
	if o.First && len(tail) > 0 {
		// The upload's first chunk, taken as x/up takes it.
		buf := &sharedBuf{bp: &tail}
		buf.refs.Store(1)
		taken := s.takeChunk(c, e, 0, false, tail, buf)
		s.release(buf)
		if taken {
			s.replyStatus(c, e, existed)
		}
		return
	}
	if len(tail) > 0 {
		// The inline upload is the payload's only chunk, sealed as chunk 0
		// and final.
		plain, err := e.up.Open(nil, 0, true, tail)
		if err != nil {
			c.failErr(badRequest("inline upload: %v", err))
			return
		}
		e.mu.Lock()
		if e.inline == nil {
			e.inline = plain
		}
		e.mu.Unlock()
	}
	s.start(e)
	if !(o.Inline || o.ChunkSize == 0) {
		s.replyStatus(c, e, existed)
		return
	}
	c.freeBody()
	s.waitAnswer(ctx, e)
	// The long-poll ran out before the answer: the client asks again,
	// maybe through another instance, which must find the exchange
	// (and its answer, which then goes to the store) there.
	if st, _ := e.snapshot(); !wire.Ended(st.Phase) && st.Down == nil {
		if err := s.persist(context.WithoutCancel(ctx), e); err != nil {
			c.failErr(err)
			return
		}
	}
	s.replyAnswer(c, e, existed)
}

// openExchange creates the exchange, or returns the one open under its id.
func (s *Server) openExchange(ctx context.Context, key keyring.Key, raw []byte, o wire.Open) (*exch, bool, error) {
	if e, err := s.exchange(ctx, o.ID, key); err == nil {
		if string(e.openRaw) != string(raw) {
			return nil, false, conflict("exchange %s is open with another message", o.ID)
		}
		return e, true, nil
	} else if ue := (*userError)(nil); !errors.As(err, &ue) || ue.status != http.StatusNotFound {
		return nil, false, err
	}
	if err := s.admit(ctx, key, o); err != nil {
		return nil, false, err
	}
	e, err := newExch(key, raw, o)
	if err != nil {
		return nil, false, err
	}
	now := time.Now().UTC()
	first := wire.PhaseReceiving
	if o.Kind != wire.KindPush {
		first = wire.PhaseSending
	}
	e.st = state{V: stateVersion, Kind: o.Kind, KeyID: key.ID, Repo: o.Repo, Open: raw, Phase: first,
		Timeline: []wire.PhaseTime{{Phase: first, At: now}}, Created: now, Owner: s.instance, Lease: now.Add(leaseTTL)}
	s.mu.Lock()
	if other, ok := s.live[o.ID]; ok {
		s.mu.Unlock()
		if string(other.openRaw) != string(raw) || other.key.ID != key.ID {
			return nil, false, conflict("exchange %s is open with another message", o.ID)
		}
		return other, true, nil
	}
	s.live[o.ID] = e
	s.mu.Unlock()
	// A push, and anything with a chunked upload, is kept in the store
	// from the start: its chunks may arrive at any instance, and a push
	// must be known to have happened.
	if o.Kind == wire.KindPush || o.ChunkSize > 0 {
		if err := s.persist(ctx, e); err != nil {
			s.forget(e.id)
			if errors.Is(err, store.ErrPrecondition) {
				// Another instance opened it a moment ago.
				e2, err := s.exchange(ctx, o.ID, key)
				if err != nil {
					return nil, false, err
				}
				return e2, true, nil
			}
			return nil, false, err
		}
	}
	s.metrics.opened.WithLabelValues(o.Kind).Inc()
	s.log.Info("exchange", "id", o.ID, "kind", o.Kind, "key", key.ID)
	return e, false, nil
}

func (s *Server) forget(id string) {
	s.mu.Lock()
	delete(s.live, id)
	s.mu.Unlock()
}

// waitAnswer waits until the exchange has ended or its answer is on its
// way (a download to fetch), or the long-poll is over.
func (s *Server) waitAnswer(ctx context.Context, e *exch) {
	s.wait(ctx, e, longPoll, func(st state) bool {
		return wire.Ended(st.Phase) || (st.Down != nil && st.Kind != wire.KindPush)
	})
}

// replyAnswer answers a request that waited for the answer (waitAnswer):
// with the exchange's status, and with the answer's first chunk when it
// has chunks.
func (s *Server) replyAnswer(c *call, e *exch, held bool) {
	first, release := s.firstChunk(c.r.Context(), e)
	defer release()
	s.replyStatusFirst(c, e, held, first)
}

// replyStatus answers with the exchange's status, and with its answer's
// payload when that goes inline.
func (s *Server) replyStatus(c *call, e *exch, held bool) {
	s.replyStatusFirst(c, e, held, nil)
}

// replyStatusFirst is replyStatus with the answer's first chunk (from
// firstChunk) after the status, when there is one.
func (s *Server) replyStatusFirst(c *call, e *exch, held bool, first []byte) {
	st := s.status(c.r.Context(), e, held)
	var tail []byte
	e.mu.Lock()
	if st.Down != nil && st.Down.Inline {
		tail = e.down.inline
	}
	e.mu.Unlock()
	if first != nil && st.Down != nil && !st.Down.Inline {
		st.First, tail = true, first
	}
	if st.Down != nil && st.Down.Inline && tail == nil {
		// The inline answer lived in another instance's memory: the
		// exchange must run again.
		st.Phase, st.Code, st.Message = wire.PhaseFailed, wire.CodeGone, "the answer was lost: ask again"
	}
	c.reply(http.StatusOK, st, tail)
}

// lookup finds the exchange a request names (?id=) and marks a request
// for it in progress until done is called; it answers the error itself.
func (s *Server) lookup(c *call) (e *exch, done func(), ok bool) {
	e, err := s.exchange(c.r.Context(), c.r.URL.Query().Get("id"), c.key)
	if err != nil {
		c.failErr(err)
		return nil, nil, false
	}
	return e, e.use(), true
}

// chunkIndex reads a request's chunk index (?i=), answering the error.
func chunkIndex(c *call) (uint32, bool) {
	q := c.r.URL.Query().Get("i")
	i, err := parseIndex(q)
	if err != nil {
		c.failErr(badRequest("chunk index %q is not a number", q))
		return 0, false
	}
	return i, true
}

// handleUp stores one upload chunk. It is idempotent: the same chunk at
// the same index succeeds again; a chunk that is not what the client
// sealed there is refused, naming its index. Each chunk is authenticated
// on arrival, so a chunk altered on the way is refused at once.
func (s *Server) handleUp(c *call) {
	ctx := c.r.Context()
	q := c.r.URL.Query()
	e, done, ok := s.lookup(c)
	if !ok {
		return
	}
	defer done()
	i, ok := chunkIndex(c)
	if !ok {
		return
	}
	final := q.Get("final") == "1"
	if !s.takeChunk(c, e, i, final, c.body, c.shared) {
		return
	}
	if final {
		// The last chunk's answer waits for the outcome, so that a push
		// that lands while it uploads costs no extra round trip.
		c.freeBody()
		s.waitAnswer(ctx, e)
		s.replyAnswer(c, e, false)
		return
	}
	s.replyStatus(c, e, false)
}

// takeChunk authenticates upload chunk i (sealed in body, which buf
// holds), hands it to the push and stores it. It answers the request
// itself, and returns false, when the chunk is refused, or when the
// exchange has ended (a chunk sent again after the push ended: its
// client was cut off, and the relay finished the push from the kept
// chunks while the client came back; the answer is the outcome, as the
// final chunk's would have been).
func (s *Server) takeChunk(c *call, e *exch, i uint32, final bool, body []byte, buf *sharedBuf) bool {
	ctx := c.r.Context()
	size := e.open.ChunkSize
	if size == 0 {
		c.failErr(badRequest("exchange %s takes no upload chunks", e.id))
		return false
	}
	// Every chunk before i holds at least MinChunk bytes. In int64, with
	// both factors below 2^32: no overflow.
	if int64(i)*payload.MinChunk >= s.cfg.MaxPushSize {
		c.failErr(tooLarge("the upload is larger than this relay accepts (%d bytes)", s.cfg.MaxPushSize))
		return false
	}
	// No chunk is larger than its ramped size, and none but the final
	// one smaller than payload.MinChunk: no way to split a payload into a
	// flood of tiny ones.
	if n := len(body) - seal.Overhead; !payload.Fits(i, size, n, final) {
		most := payload.Ramp(i, size)
		c.failErr(badRequest("chunk %d: %d bytes, but chunk %d holds %d to %d bytes (fewer only if it is the final one)",
			i, len(body), i, min(most, payload.MinChunk)+seal.Overhead, most+seal.Overhead))
		return false
	}
	// Opened in place: the plaintext takes the ciphertext's place, and
	// the flag byte the first byte of the tag's.
	plain, err := e.up.Open(body[:0], i, final, body)
	if err != nil {
		c.failErr(badRequest("%v: it was altered on the way or belongs to another exchange", err))
		return false
	}
	if st, _ := e.snapshot(); wire.Ended(st.Phase) {
		if st.Phase == wire.PhaseCancelled {
			c.failErr(&userError{http.StatusConflict, wire.CodeGone, fmt.Sprintf("exchange %s is %s and takes no more chunks", e.id, st.Phase)})
			return false
		}
		s.replyStatus(c, e, false)
		return false
	}
	if err := s.chargeBytes(e, int64(len(body))); err != nil {
		c.failErr(err)
		return false
	}
	// The push starts on its first authenticated chunk, before that chunk
	// is stored, so that handOff can give it the chunk at once.
	s.start(e)
	s.handOff(e, i, final, plain, buf)
	if final {
		// Only a chunk that opened as the last one marks the end, once.
		_, err := s.store.Put(ctx, upFinalKey(e.id), []byte(strconv.FormatUint(uint64(i), 10)), store.PutOptions{IfNoneMatch: true})
		if errors.Is(err, store.ErrPrecondition) {
			b, _, gerr := s.store.Get(ctx, upFinalKey(e.id), nil)
			if gerr != nil || string(b) != strconv.FormatUint(uint64(i), 10) {
				c.failErr(conflict("chunk %d: exchange %s already has its final chunk", i, e.id))
				return false
			}
		} else if err != nil {
			c.failErr(err)
			return false
		}
	}
	obj := append(plain, flagOf(final))
	if _, err := s.store.Put(ctx, upKey(e.id, i), obj, store.PutOptions{IfNoneMatch: true}); errors.Is(err, store.ErrPrecondition) {
		old, _, err := s.store.Get(ctx, upKey(e.id, i), nil)
		if err != nil || string(old) != string(obj) {
			c.failErr(conflict("chunk %d already holds different bytes", i))
			return false
		}
	} else if err != nil {
		c.failErr(err)
		return false
	}
	e.mu.Lock()
	e.seen = time.Now()
	e.notify()
	e.mu.Unlock()
	s.metrics.chunksIn.Inc()
	s.follow(e)
	return true
}

// handleDown answers one download chunk: the final flag, then the chunk
// sealed now from its plaintext. The same bytes every time (the key,
// nonce and associated data are fixed by the exchange and the index), so
// a download can be resumed or repeated. A chunk not written yet is
// waited for.
func (s *Server) handleDown(c *call) {
	e, done, ok := s.lookup(c)
	if !ok {
		return
	}
	defer done()
	i, ok := chunkIndex(c)
	if !ok {
		return
	}
	obj, bp, err := s.sealedDown(c.r.Context(), e, i, longPoll)
	if bp != nil {
		defer s.putBuf(bp)
	}
	if err != nil {
		c.failErr(err)
		return
	}
	c.raw(http.StatusOK, obj)
}

// sealedDown waits up to d for answer chunk i and returns it as x/down
// serves it: the final flag, then the sealed chunk. The bytes lie in bp,
// a pooled buffer to give back (nil when there is none).
func (s *Server) sealedDown(ctx context.Context, e *exch, i uint32, d time.Duration) (obj []byte, bp *[]byte, err error) {
	// A buffer is taken only to read the chunk: a request waiting for a
	// chunk not written yet holds none.
	found := false
	s.wait(ctx, e, d, func(st state) bool {
		if st.Phase == wire.PhaseFailed || st.Phase == wire.PhaseCancelled {
			return true
		}
		if st.Down != nil && st.Down.Final && i >= st.Down.Chunks {
			return true
		}
		e.mu.Lock()
		local := e.working && e.down.stream != nil && i >= e.down.chunks
		e.mu.Unlock()
		if local || st.Down == nil {
			return false // this instance writes it, and its notice wakes us
		}
		// Read after the first byte, which the answer's flag takes.
		if bp == nil {
			bp = s.getBuf(int(s.cfg.MaxBody) + 1)
		}
		b, _, err := s.store.Get(ctx, downKey(e.id, i), (*bp)[1:1])
		if err == nil && len(b) > 0 {
			obj, found = (*bp)[:1+len(b)], true
			return true
		}
		s.putBuf(bp)
		bp = nil
		return false
	})
	st, _ := e.snapshot()
	switch {
	case st.Phase == wire.PhaseFailed || st.Phase == wire.PhaseCancelled:
		return nil, bp, &userError{http.StatusConflict, wire.CodeGone, fmt.Sprintf("the exchange %s: %s", st.Phase, st.Message)}
	case st.Down != nil && st.Down.Inline:
		return nil, bp, badRequest("the answer of exchange %s came inline", e.id)
	case st.Down != nil && st.Down.Final && i >= st.Down.Chunks:
		return nil, bp, &userError{http.StatusRequestedRangeNotSatisfiable, wire.CodeRange, fmt.Sprintf("chunk %d is past the final chunk %d", i, st.Down.Chunks-1)}
	case !found:
		return nil, bp, &userError{http.StatusConflict, wire.CodeNotReady, fmt.Sprintf("chunk %d is not written yet: ask again", i)}
	}
	stream, err := s.downStream(e, st.Down)
	if err != nil {
		return nil, bp, err
	}
	plain, final := splitFlag(obj[1:])
	obj[0] = flagOf(final)
	sealed := stream.Seal(obj[1:1], i, final, plain)
	return obj[:1+len(sealed)], bp, nil
}

// firstWait bounds how long a reply that waited for an answer waits
// further for its first chunk, which is stored a moment after the
// answer's terms are set.
const firstWait = time.Second

// firstChunk returns, for a reply that waited for the answer of a read,
// the answer's first chunk as x/down serves it, to go with the reply: the
// client then starts handing git the answer without a round trip more.
// Nil when the answer has no chunks or the first is not there at once;
// release gives its buffer back.
func (s *Server) firstChunk(ctx context.Context, e *exch) (first []byte, release func()) {
	release = func() {}
	st, _ := e.snapshot()
	if st.Kind == wire.KindPush || st.Down == nil || st.Down.Inline || wire.Ended(st.Phase) && st.Phase != wire.PhaseDone {
		return nil, release
	}
	// With the status, as an inline answer goes: under both caps on a
	// body, with room for the message.
	if int64(payload.Ramp(0, st.Down.ChunkSize)+1+seal.Overhead+8<<10) > min(e.open.MaxBody, s.cfg.MaxBody) {
		return nil, release
	}
	obj, bp, err := s.sealedDown(ctx, e, 0, firstWait)
	if bp != nil {
		release = func() { s.putBuf(bp) }
	}
	if err != nil {
		return nil, release
	}
	return obj, release
}

// downStream is the exchange's download sealer.
func (s *Server) downStream(e *exch, d *wire.Down) (*seal.Stream, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.down.stream != nil {
		return e.down.stream, nil
	}
	salt, err := hexSalt(d.Salt)
	if err != nil {
		return nil, err
	}
	st, err := seal.New(e.key, keyring.LabelDownload, salt, wire.Hash(e.openRaw))
	if err != nil {
		return nil, err
	}
	e.down.stream = st
	return st, nil
}

// handleStatus says where an exchange stands; with wait=1 it holds the
// answer until the exchange has ended or its answer is on its way.
func (s *Server) handleStatus(c *call) {
	ctx := c.r.Context()
	q := c.r.URL.Query()
	e, done, ok := s.lookup(c)
	if !ok {
		return
	}
	defer done()
	s.maybeTakeOver(e)
	if q.Get("wait") != "" {
		s.waitAnswer(ctx, e)
		s.replyAnswer(c, e, q.Get("held") != "")
		return
	}
	s.replyStatus(c, e, q.Get("held") != "")
}

// handleCancel ends an exchange its client gave up on: its work stops,
// its chunks go, and it no longer counts against the key's limits.
func (s *Server) handleCancel(c *call) {
	ctx := c.r.Context()
	e, done, ok := s.lookup(c)
	if !ok {
		return
	}
	done()
	s.cancelExchange(ctx, e, "cancelled by its client")
	c.reply(http.StatusOK, s.status(ctx, e, false), nil)
}

// cancelExchange ends an exchange that has not ended yet.
func (s *Server) cancelExchange(ctx context.Context, e *exch, why string) {
	e.mu.Lock()
	applying := e.applying
	if !applying {
		e.cancelled = true
	}
	cancel := e.cancel
	e.mu.Unlock()
	if applying {
		return // upstream has the pack: the outcome decides
	}
	err := s.update(ctx, e, func(st *state) error {
		if wire.Ended(st.Phase) {
			return errEnded
		}
		st.Phase, st.Message, st.Code = wire.PhaseCancelled, why, wire.CodeGone
		st.Timeline = append(st.Timeline, wire.PhaseTime{Phase: wire.PhaseCancelled, At: time.Now().UTC()})
		return nil
	})
	if cancel != nil {
		cancel()
	}
	if err == nil {
		s.log.Info("exchange cancelled", "id", e.id, "why", why)
		s.dropChunks(ctx, e.id)
	}
}

func (s *Server) dropChunks(ctx context.Context, id string) {
	for _, p := range chunkPrefixes(id) {
		_ = store.DeletePrefix(ctx, s.store, p)
	}
	s.usage.drop(id)
}

// finish ends an exchange with its outcome.
func (s *Server) finish(ctx context.Context, e *exch, results []wire.RefResult, failure error) {
	err := s.update(ctx, e, func(st *state) error {
		if wire.Ended(st.Phase) {
			return errEnded
		}
		phase := wire.PhaseDone
		if failure != nil {
			phase = wire.PhaseFailed
			var ue *userError
			if errors.As(failure, &ue) {
				st.Code = ue.code
			}
			st.Message = s.redact(failure.Error())
		}
		st.Phase, st.Results = phase, results
		st.Timeline = append(st.Timeline, wire.PhaseTime{Phase: phase, At: time.Now().UTC()})
		st.Owner, st.Lease = "", time.Time{}
		return nil
	})
	if err != nil && !errors.Is(err, errEnded) {
		s.log.Error("record the outcome", "id", e.id, "err", err)
	}
	outcome := "done"
	if failure != nil {
		outcome = "failed"
	}
	s.metrics.finished.WithLabelValues(e.open.Kind, outcome).Inc()
}

// start runs the exchange's work on this instance, unless it runs
// already (here, or under another instance's live lease) or has ended.
func (s *Server) start(e *exch) {
	e.mu.Lock()
	if e.working || wire.Ended(e.st.Phase) {
		e.mu.Unlock()
		return
	}
	if e.persisted && e.st.Owner != "" && e.st.Owner != s.instance && time.Now().Before(e.st.Lease) {
		e.mu.Unlock()
		return
	}
	if s.stopping.Load() {
		e.mu.Unlock()
		return
	}
	if e.open.Kind != wire.KindPush && e.st.Down != nil && !e.st.Down.Final {
		// The instance that wrote this answer stopped half-way: another
		// run of upload-pack would write other bytes, so the client asks
		// again instead.
		e.mu.Unlock()
		s.finish(s.ctx, e, nil, &userError{http.StatusConflict, wire.CodeGone, "the relay instance writing this answer stopped: ask again"})
		return
	}
	ctx, cancel := context.WithCancel(s.ctx)
	e.working, e.cancel = true, cancel
	if e.open.Kind == wire.KindPush {
		// The push reads from chunk 0: handOff may keep the first two
		// for it while it starts.
		e.reading, e.wantUp = true, 0
	}
	// An exchange this instance kept a moment ago (when it opened) holds
	// a fresh claim already: taking it again would cost a durable write
	// for nothing.
	claimed := e.persisted && !(e.st.Owner == s.instance && time.Until(e.st.Lease) > leaseTTL*3/4)
	e.mu.Unlock()
	if claimed {
		err := s.update(ctx, e, func(st *state) error {
			if wire.Ended(st.Phase) {
				return errEnded
			}
			if st.Owner != "" && st.Owner != s.instance && time.Now().Before(st.Lease) {
				return errLeased
			}
			st.Owner, st.Lease = s.instance, time.Now().Add(leaseTTL).UTC()
			return nil
		})
		if err != nil {
			cancel()
			e.mu.Lock()
			e.working = false
			s.dropFresh(e)
			e.mu.Unlock()
			return
		}
	}
	s.work.Add(1)
	go func() {
		defer s.work.Done()
		defer cancel()
		stopLease := s.keepLease(ctx, e)
		switch e.open.Kind {
		case wire.KindPush:
			s.runPush(ctx, e)
		default:
			s.runAnswer(ctx, e)
		}
		stopLease()
		e.mu.Lock()
		e.working, e.cancel = false, nil
		s.dropFresh(e)
		e.notify()
		e.mu.Unlock()
	}()
}

var errLeased = errors.New("another instance works on it")

// keepLease renews the instance's claim on a kept exchange while its work
// runs, from the moment it is kept (an exchange kept only once its answer
// outlasts a long-poll too).
func (s *Server) keepLease(ctx context.Context, e *exch) func() {
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(leaseTTL / 4)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				e.mu.Lock()
				persisted := e.persisted
				e.mu.Unlock()
				if !persisted {
					continue
				}
				err := s.update(ctx, e, func(st *state) error {
					if wire.Ended(st.Phase) {
						return errEnded
					}
					st.Owner, st.Lease = s.instance, time.Now().Add(leaseTTL).UTC()
					return nil
				})
				if errors.Is(err, errEnded) {
					// Cancelled through another instance: stop, unless
					// upstream has the pack already.
					e.mu.Lock()
					if !e.applying {
						e.cancelled = true
						if e.cancel != nil {
							e.cancel()
						}
					}
					e.mu.Unlock()
					return
				}
			}
		}
	}()
	return func() { close(done); <-stopped }
}

// maybeTakeOver starts the work of an exchange whose owner's lease ran
// out (an instance that died), falling back to the chunks in the store.
func (s *Server) maybeTakeOver(e *exch) {
	e.mu.Lock()
	expired := e.persisted && !e.working && !wire.Ended(e.st.Phase) && (e.st.Owner == "" || e.st.Owner == s.instance || time.Now().After(e.st.Lease))
	e.mu.Unlock()
	if expired {
		s.start(e)
	}
}

// resume takes up, after a restart, the kept exchanges this instance (or
// nobody) was working on.
func (s *Server) resume() {
	ctx := s.ctx
	_ = s.store.List(ctx, "st/", func(i store.Info) error {
		id := strings.TrimPrefix(i.Key, "st/")
		st, _, err := s.loadState(ctx, id)
		if err != nil || wire.Ended(st.Phase) {
			return nil
		}
		if st.Owner != s.instance && time.Now().Before(st.Lease) {
			return nil
		}
		key, ok := s.cfg.Ring.Lookup(st.KeyID)
		if !ok {
			return nil
		}
		e, err := s.exchange(ctx, id, key)
		if err != nil {
			return nil
		}
		s.log.Info("resuming exchange", "id", id, "kind", st.Kind, "phase", st.Phase)
		s.start(e)
		return nil
	})
}

// upChunks returns the upload's chunks in order, waiting for each to
// arrive (from this instance's handlers, or any other's through the
// store). The slice it returns is valid until the next call, which
// reuses its memory.
func (s *Server) upChunks(ctx context.Context, e *exch) (next func() ([]byte, bool, error), release func()) {
	e.mu.Lock()
	inline := e.inline
	e.mu.Unlock()
	if inline != nil || e.open.Inline {
		done := false
		return func() ([]byte, bool, error) {
			if done {
				return nil, false, errors.New("read past the final chunk")
			}
			done = true
			if inline == nil {
				return nil, false, errors.New("the inline upload was lost: send it again")
			}
			return inline, true, nil
		}, func() {}
	}
	// One buffer: payload.Reader is done with a chunk before it asks for
	// the next. A chunk handed over as it came (handOff) is read where its
	// request opened it.
	buf := s.getBuf(int(s.cfg.MaxBody))
	var cur *sharedBuf
	var i uint32
	e.mu.Lock()
	e.reading, e.wantUp = true, 0
	e.mu.Unlock()
	return func() ([]byte, bool, error) {
			if cur != nil {
				s.release(cur)
				cur = nil
			}
			idle := time.NewTimer(s.cfg.Idle)
			defer idle.Stop()
			for {
				_, changed := e.snapshot()
				e.mu.Lock()
				e.wantUp = i
				f, ok := e.fresh[i]
				delete(e.fresh, i)
				e.mu.Unlock()
				if ok {
					cur = f.buf
					i++
					return f.plain, f.final, nil
				}
				b, _, err := s.store.Get(ctx, upKey(e.id, i), (*buf)[:0])
				if err == nil {
					if len(b) == 0 {
						return nil, false, fmt.Errorf("chunk %d is empty in the store", i)
					}
					i++
					plain, final := splitFlag(b)
					return plain, final, nil
				}
				if !errors.Is(err, store.ErrNotFound) {
					return nil, false, err
				}
				if st, _ := e.snapshot(); wire.Ended(st.Phase) {
					return nil, false, errEnded
				}
				poll := time.NewTimer(250 * time.Millisecond)
				select {
				case <-changed:
				case <-poll.C:
				case <-idle.C:
					poll.Stop()
					return nil, false, fmt.Errorf("no chunk %d came for %s", i, s.cfg.Idle)
				case <-ctx.Done():
					poll.Stop()
					return nil, false, ctx.Err()
				}
				poll.Stop()
			}
		}, func() {
			e.mu.Lock()
			s.dropFresh(e)
			e.mu.Unlock()
			if cur != nil {
				s.release(cur)
			}
			s.putBuf(buf)
		}
}

// dropFresh ends handOff's deliveries to a push that no longer reads:
// the chunks it kept go back to the pool. The caller holds e.mu.
func (s *Server) dropFresh(e *exch) {
	e.reading = false
	for k, f := range e.fresh {
		s.release(f.buf)
		delete(e.fresh, k)
	}
}

// handOff gives an authenticated upload chunk to this instance's push
// while handleUp stores it, when it is the chunk the push reads next or
// the one after: the push streams it upstream at once instead of after
// the store's write reaches the disk (milliseconds a megabyte). Only
// authenticated bytes go upstream, in order, as from the store; the
// payload's size and hash are checked over what the push read. The
// client's chunk is acknowledged once stored, as before, so a push that
// stops half-way resumes from the store. The push reads the plaintext in
// the request's buffer, which the two share (sharedBuf).
func (s *Server) handOff(e *exch, i uint32, final bool, plain []byte, buf *sharedBuf) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.reading || i < e.wantUp || i > e.wantUp+1 {
		return
	}
	if _, ok := e.fresh[i]; ok {
		return
	}
	if e.fresh == nil {
		e.fresh = map[uint32]freshChunk{}
	}
	buf.refs.Add(1)
	e.fresh[i] = freshChunk{plain: plain, buf: buf, final: final}
	e.notify()
}

// chargeBytes checks that a chunk fits the key's and the relay's disk
// budgets.
func (s *Server) chargeBytes(e *exch, n int64) error {
	keyBytes, total := s.usage.bytes(e.key.ID)
	if total+n > s.cfg.MaxBytes {
		return &userError{http.StatusInsufficientStorage, wire.CodeLimit, fmt.Sprintf("the relay holds %d bytes of unfinished exchanges, its limit: try again later", total)}
	}
	if keyBytes+n > s.cfg.MaxKeyBytes {
		return &userError{http.StatusInsufficientStorage, wire.CodeLimit, fmt.Sprintf("this key's unfinished exchanges hold %d bytes, its limit: finish or cancel them, or wait for them to expire (%s idle)", keyBytes, s.cfg.Idle)}
	}
	s.usage.add(e.key.ID, e.id, n)
	return nil
}

// downChunkSize is the payload bytes per download chunk for a client
// whose body cap is maxBody: the answer is a flag byte and the sealed
// chunk.
func (s *Server) downChunkSize(clientMax int64) int {
	return payload.ChunkSize(min(clientMax, s.cfg.MaxBody), 1)
}
