package helper

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/git-relay/git-relay/internal/keyring"
	"github.com/git-relay/git-relay/internal/mem"
	"github.com/git-relay/git-relay/internal/payload"
	"github.com/git-relay/git-relay/internal/seal"
	"github.com/git-relay/git-relay/internal/wire"
)

// exchange is one exchange with the relay, as the helper runs it (see
// package wire): opened under an id the helper chooses, so that opening
// it again after a lost answer, or after a restart, is the same exchange.
type exchange struct {
	h    *Helper
	id   string
	open wire.Open
	raw  []byte // the Open message's exact bytes
	up   *seal.Stream
}

// newExchange prepares an exchange opened with o (its kind, its upload's
// chunk size or inline upload, what it follows); the rest is filled in.
func (h *Helper) newExchange(o wire.Open) (*exchange, error) {
	o.V, o.ID, o.Repo, o.Salt, o.MaxBody = wire.Version, randomHex(16), h.repo, randomHex(32), h.maxBdy
	raw, err := json.Marshal(o)
	if err != nil {
		return nil, err
	}
	return h.exchangeFrom(raw)
}

// exchangeFrom rebuilds an exchange from its Open bytes (a resumed one).
func (h *Helper) exchangeFrom(raw []byte) (*exchange, error) {
	var o wire.Open
	if err := json.Unmarshal(raw, &o); err != nil {
		return nil, err
	}
	salt, err := hex.DecodeString(o.Salt)
	if err != nil {
		return nil, err
	}
	up, err := seal.New(h.client.Key, keyring.LabelUpload, salt, wire.Hash(raw))
	if err != nil {
		return nil, err
	}
	return &exchange{h: h, id: o.ID, open: o, raw: raw, up: up}, nil
}

// openIt sends the Open message, with the whole upload payload when it
// goes inline, and returns the status and the answer's inline payload.
// The server holds the answer until the exchange has ended or its answer
// is on its way, when there is nothing more to upload.
func (x *exchange) openIt(ctx context.Context, inline []byte, what string) (*wire.Status, []byte, error) {
	var tail []byte
	if x.open.Inline {
		tail = x.up.Seal(nil, 0, true, inline)
	}
	return x.openWith(ctx, tail, what)
}

// openWith sends the Open message with tail after it: the sealed inline
// upload, or the upload's sealed first chunk (Open.First), or nothing.
func (x *exchange) openWith(ctx context.Context, tail []byte, what string) (*wire.Status, []byte, error) {
	var st wire.Status
	// The message is framed as JSON, but its exact bytes are what the
	// payloads are bound to: they go as a raw JSON message.
	ans, err := x.h.client.Call(ctx, wire.Request{Method: http.MethodPost, Path: wire.PathOpen,
		Msg: json.RawMessage(x.raw), Tail: tail, What: what}, &st)
	if err != nil {
		return nil, nil, x.h.explain(err)
	}
	return &st, ans, nil
}

// status asks where the exchange stands; with wait, the server holds the
// answer until it has ended or its answer is on its way.
func (x *exchange) status(ctx context.Context, wait bool, what string) (*wire.Status, []byte, error) {
	q := url.Values{"id": {x.id}}
	if wait {
		q.Set("wait", "1")
	}
	var st wire.Status
	tail, err := x.h.client.Call(ctx, wire.Request{Method: http.MethodGet, Path: wire.PathStatus, Query: q, What: what}, &st)
	if err != nil {
		return nil, nil, x.h.explain(err)
	}
	return &st, tail, nil
}

// outcome follows the exchange until it has ended (or its answer is on
// its way, for a read), showing its phases.
func (x *exchange) outcome(ctx context.Context, st *wire.Status, tail []byte, what string) (*wire.Status, []byte, error) {
	var err error
	for !wire.Ended(st.Phase) && (st.Down == nil || x.open.Kind == wire.KindPush) {
		x.h.ui.status("server: %s...", st.Phase)
		if st, tail, err = x.status(ctx, true, what); err != nil {
			return nil, nil, err
		}
	}
	return st, tail, nil
}

// cancel tells the server the helper gives up on the exchange, so that
// it stops its work and frees its slot at once. Best effort: a relay that
// cannot be reached expires it by itself.
func (x *exchange) cancel() {
	ctx, stop := context.WithTimeout(context.Background(), 5*time.Second)
	defer stop()
	c := *x.h.client
	c.Retries = 1
	_, _ = c.Call(ctx, wire.Request{Method: http.MethodPost, Path: wire.PathCancel, Query: url.Values{"id": {x.id}}, What: "cancelling"}, nil)
}

// upChunk uploads one sealed chunk; the final chunk's answer waits for
// the outcome, which it returns.
func (x *exchange) upChunk(ctx context.Context, c chunk, sealed []byte) (*wire.Status, []byte, error) {
	i := c.i
	q := url.Values{"id": {x.id}, "i": {strconv.FormatUint(uint64(i), 10)}}
	if c.final {
		q.Set("final", "1")
	}
	var st wire.Status
	tail, err := x.h.client.Call(ctx, wire.Request{Method: http.MethodPut, Path: wire.PathUp, Query: q, Raw: sealed,
		What: fmt.Sprintf("upload chunk %d", i+1), After: c.after, Sent: c.sent}, &st)
	if err != nil {
		return nil, nil, fmt.Errorf("upload chunk %d: %w", i+1, x.h.explain(err))
	}
	return &st, tail, nil
}

// downloader fetches an answer's chunks a few at a time, in any order,
// authenticates each as it lands, and hands them out in order.
type downloader struct {
	x      *exchange
	stream *seal.Stream
	cache  *fetchCache // may be nil

	mu     sync.Mutex
	cond   *sync.Cond
	got    map[uint32]downChunk
	next   uint32 // the chunk the reader waits for
	asked  uint32 // the next chunk to ask for
	final  int64  // the final chunk's index, or -1
	err    error
	moved  int64
	start  time.Time
	window uint32

	free      chan []byte // chunk buffers to use again
	bufSize   int
	chunkSize int    // the answer's
	lent      []byte // the buffer of the chunk the reader has
}

type downChunk struct {
	plain []byte
	final bool
	buf   []byte // the buffer plain lies in, nil if not ours to reuse
}

// download returns the answer's plaintext as a stream: inline, or
// downloaded in chunks while the server may still be writing them. The
// stream ends only once the whole answer has authenticated and matched
// what the server vouched for.
func (x *exchange) download(ctx context.Context, st *wire.Status, tail []byte, limit int64, cache *fetchCache) (io.ReadCloser, error) {
	if st.Down == nil {
		return nil, errors.New("the relay's answer carries no payload")
	}
	if st.Down.Inline {
		plain, err := payload.Unbytes(tail, limit)
		if err != nil {
			return nil, fmt.Errorf("the relay's answer: %w", err)
		}
		return io.NopCloser(bytes.NewReader(plain)), nil
	}
	salt, err := hex.DecodeString(st.Down.Salt)
	if err != nil || len(salt) != 32 {
		return nil, errors.New("bad salt in the relay's answer")
	}
	if st.Down.ChunkSize <= 0 || int64(st.Down.ChunkSize)+1+seal.Overhead > x.h.maxBdy {
		return nil, errors.New("the relay's answer has a chunk size over relay.maxBody")
	}
	stream, err := seal.New(x.h.client.Key, keyring.LabelDownload, salt, wire.Hash(x.raw))
	if err != nil {
		return nil, err
	}
	d := &downloader{x: x, stream: stream, cache: cache, got: map[uint32]downChunk{}, final: -1, start: time.Now(), window: chunkWorkers,
		free: make(chan []byte, 2*chunkWorkers+1), bufSize: int(x.h.maxBdy), chunkSize: st.Down.ChunkSize}
	d.cond = sync.NewCond(&d.mu)
	if st.First {
		// The first chunk came with the answer. One that does not
		// authenticate is asked for again, like any other.
		if c, err := d.open(0, tail); err == nil {
			d.got[0], d.asked, d.moved = c, 1, int64(len(c.plain))
			if c.final {
				d.final = 0
			}
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for range chunkWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.work(ctx)
		}()
	}
	r := payload.NewReader(d.nextChunk, limit)
	return &downloadReader{Reader: r, stop: func() {
		cancel()
		d.fail(context.Canceled)
		wg.Wait()
		r.Close()
	}}, nil
}

type downloadReader struct {
	*payload.Reader
	stop func()
	once sync.Once
}

func (r *downloadReader) Close() error {
	r.once.Do(r.stop)
	return nil
}

func (d *downloader) fail(err error) {
	d.mu.Lock()
	if d.err == nil {
		d.err = err
	}
	d.cond.Broadcast()
	d.mu.Unlock()
}

// take hands a worker the next chunk to ask for, or false when there is
// none (past the final chunk, or a failure).
func (d *downloader) take() (uint32, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for {
		if d.err != nil || (d.final >= 0 && int64(d.asked) > d.final) {
			return 0, false
		}
		if d.asked < d.next+d.window {
			i := d.asked
			d.asked++
			return i, true
		}
		d.cond.Wait()
	}
}

func (d *downloader) work(ctx context.Context) {
	for {
		i, ok := d.take()
		if !ok {
			return
		}
		c, err := d.fetch(ctx, i)
		if errors.Is(err, errPastEnd) {
			continue
		}
		if err != nil {
			d.fail(err)
			return
		}
		d.mu.Lock()
		d.got[i] = c
		d.moved += int64(len(c.plain))
		if c.final && (d.final < 0 || int64(i) < d.final) {
			d.final = int64(i)
		}
		d.cond.Broadcast()
		d.x.h.ui.status("receive %d chunks, %s, %s", len(d.got)+int(d.next), humanBytes(d.moved), rate(d.moved, time.Since(d.start)))
		d.mu.Unlock()
	}
}

var errPastEnd = errors.New("past the final chunk")

// keepAfter is how long a download runs before the chunks it gets are
// kept for a resume: one interrupted sooner costs at most that long to
// run again, while keeping every chunk makes every fetch write and delete
// each byte it moves (a clone through a relay on loopback took some 7%
// longer with it).
const keepAfter = time.Second

// fetch gets chunk i: from the cache of an earlier, interrupted run, or
// from the server (which waits a while for a chunk not written yet).
func (d *downloader) fetch(ctx context.Context, i uint32) (downChunk, error) {
	q := url.Values{"id": {d.x.id}, "i": {strconv.FormatUint(uint64(i), 10)}}
	var into []byte
	for attempt := 0; ; attempt++ {
		var b []byte
		var err error
		fromCache := false
		if d.cache != nil {
			if b = d.cache.chunk(i); b != nil {
				fromCache = true
			}
		}
		if b == nil {
			if into == nil {
				into = d.getBuf(i)
			}
			b, err = d.x.h.client.Get(ctx, wire.Request{Method: http.MethodGet, Path: wire.PathDown, Query: q, What: fmt.Sprintf("download chunk %d", i+1), Into: into})
		}
		var api *wire.APIError
		switch {
		case errors.As(err, &api) && api.Code == wire.CodeNotReady:
			continue // the server waited; upload-pack is still at it
		case errors.As(err, &api) && api.Code == wire.CodeRange:
			return downChunk{}, errPastEnd
		case err != nil:
			return downChunk{}, fmt.Errorf("download chunk %d: %w", i+1, d.x.h.explain(err))
		}
		if d.cache != nil && !fromCache && len(b) > 0 && time.Since(d.start) >= keepAfter {
			// Kept as it came, before it is opened in place; a copy that
			// does not authenticate is dropped when a later run reads it.
			d.cache.keep(i, b)
		}
		// A chunk that arrives but does not authenticate is asked for
		// again: a proxy may have altered it.
		c, err := d.open(i, b)
		if err != nil {
			if fromCache {
				d.cache.forget(i)
				continue
			}
			if d.cache != nil {
				d.cache.forget(i)
			}
			if attempt >= 3 {
				return downChunk{}, fmt.Errorf("download: %w", err)
			}
			continue
		}
		if !fromCache {
			c.buf = into
		}
		return c, nil
	}
}

// open authenticates chunk i as x/down serves it (a flag byte, then the
// sealed chunk) and decrypts it in place: a chunk's answer is the only
// copy of it.
func (d *downloader) open(i uint32, b []byte) (downChunk, error) {
	if len(b) == 0 {
		return downChunk{}, fmt.Errorf("chunk %d: empty answer: %w", i, seal.ErrAuth)
	}
	final := b[0] == wire.DownFinal
	plain, err := d.stream.Open(b[1:1], i, final, b[1:])
	if err != nil {
		return downChunk{}, err
	}
	return downChunk{plain: plain, final: final}, nil
}

// getBuf hands out a buffer for chunk i: one that the payload reader is
// done with, or a new one the size the chunk may be (the first chunks of
// an answer are small).
func (d *downloader) getBuf(i uint32) []byte {
	need := min(payload.Ramp(i, d.chunkSize)+1+seal.Overhead, d.bufSize) + bytes.MinRead
	for {
		select {
		case b := <-d.free:
			if cap(b) >= need {
				return b
			}
		default:
			return mem.Fresh(need)
		}
	}
}

// putBuf takes a buffer back, unless enough are kept already.
func (d *downloader) putBuf(b []byte) {
	if b == nil {
		return
	}
	select {
	case d.free <- b[:0]:
	default:
	}
}

// nextChunk hands the payload reader the chunks in order.
func (d *downloader) nextChunk() ([]byte, bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for {
		if c, ok := d.got[d.next]; ok {
			delete(d.got, d.next)
			d.next++
			d.cond.Broadcast()
			// The payload reader asks for a chunk only once it is done
			// with the one before, whose buffer serves again.
			d.putBuf(d.lent)
			d.lent = c.buf
			return c.plain, c.final, nil
		}
		if d.err != nil {
			return nil, false, d.err
		}
		if d.final >= 0 && int64(d.next) > d.final {
			return nil, false, errors.New("the relay's answer ended early")
		}
		d.cond.Wait()
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
