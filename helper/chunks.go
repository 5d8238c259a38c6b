package helper

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/git-relay/git-relay/internal/payload"
)

// chunkWorkers is how many chunks are on their way at once, in either
// direction: enough to keep the link busy while the other side checks and
// stores the previous one, few enough that memory stays at a handful of
// chunks whatever the payload's size.
const chunkWorkers = 3

// chunk is one piece of a payload on its way: its index, whether it is
// the last one, and (for an upload) its bytes.
type chunk struct {
	i     uint32
	final bool
	buf   []byte
	// after and sent put uploads in turn (see inTurn).
	after <-chan struct{}
	sent  func()
}

// inTurn chains uploads so that each chunk's body goes out only once the
// chunk before it has gone whole: on a link that bandwidth limits, chunks
// sent side by side would each crawl at a fraction of its rate, and the
// relay, which passes a chunk on only once it is whole, would get them
// late and all at once. Their answers still overlap, which hides the
// round trips. Call it on each chunk in order.
type inTurn struct{ prev chan struct{} }

func (t *inTurn) next(c chunk) chunk {
	done := make(chan struct{})
	var once sync.Once
	c.after, c.sent = t.prev, func() { once.Do(func() { close(done) }) }
	t.prev = done
	return c
}

// moveChunks runs move for every chunk that feed sends, chunkWorkers at a
// time. Each worker has its own number (0..chunkWorkers-1), so move can
// keep buffers per worker. move returns how many bytes it moved; the first
// error, of move or of feed, stops the rest. Progress is shown as verb
// N chunks.
func (h *Helper) moveChunks(ctx context.Context, verb string, feed func(ctx context.Context, send func(chunk) error) error, move func(ctx context.Context, worker int, c chunk) (int64, error)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	var (
		mu       sync.Mutex
		moved    int64
		done     uint32
		firstErr error
	)
	fail := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
		cancel()
	}
	of := func() string { return fmt.Sprintf("%d", done) }
	next := make(chan chunk)
	var wg sync.WaitGroup
	for w := 0; w < chunkWorkers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range next {
				n, err := move(ctx, w, c)
				if err != nil {
					fail(err)
					return
				}
				mu.Lock()
				moved += n
				done++
				h.ui.status("%s %s chunks, %s, %s", verb, of(), humanBytes(moved), rate(moved, time.Since(start)))
				mu.Unlock()
			}
		}()
	}
	err := feed(ctx, func(c chunk) error {
		select {
		case next <- c:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	close(next)
	if err != nil {
		fail(err)
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	h.ui.done("%s %s chunks, %s, %s, done.", verb, of(), humanBytes(moved), rate(moved, time.Since(start)))
	return nil
}

// chunkTime is about how long an upload chunk should take on the link.
// The relay passes a chunk on only once the whole of it has come and
// opened, so a push lags its upload by the time its largest chunk takes:
// on a link that limits the rate, chunks are cut to about this long.
const chunkTime = 200 * time.Millisecond

// minCutChunk is the least the sizer cuts a chunk to, however slow the
// link: smaller ones would cost more in round trips than they save.
const minCutChunk = 1 << 20

// chunkSizer cuts a push's payload into chunks that suit the link: the
// first ones ramped (payload.Cut), each later one about chunkTime of the
// rate the upload has had so far, up to the full chunk size. The size of
// chunk i is settled once chunk i-2 has been answered, so that it rests
// on a measurement, while chunk i-1 keeps the link busy. Chunks an
// interrupted run sealed are cut as that run cut them.
type chunkSizer struct {
	stop  <-chan struct{} // the splitter's end: sizes stops waiting
	fixed []int           // sizes an interrupted run cut its chunks to
	now   func() time.Time

	mu      sync.Mutex
	rate    float64 // bytes per second, 0 until measured
	settled map[uint32]chan struct{}
	sentAt  map[uint32]time.Time
}

func newChunkSizer(stop <-chan struct{}, fixed []int) *chunkSizer {
	return &chunkSizer{stop: stop, fixed: fixed, now: time.Now, settled: map[uint32]chan struct{}{}, sentAt: map[uint32]time.Time{}}
}

func (s *chunkSizer) settledCh(i uint32) chan struct{} {
	ch, ok := s.settled[i]
	if !ok {
		ch = make(chan struct{})
		s.settled[i] = ch
	}
	return ch
}

// size is payload.SplitRamp's sizes.
func (s *chunkSizer) size(i uint32, chunkSize int) int {
	if int(i) < len(s.fixed) {
		return s.fixed[i]
	}
	ramp := payload.Cut(i, chunkSize)
	if i < 2 || ramp <= minCutChunk {
		return ramp // no measurement would cut it smaller
	}
	s.mu.Lock()
	ch := s.settledCh(i - 2)
	s.mu.Unlock()
	select {
	case <-ch:
	case <-s.stop:
		return ramp
	}
	s.mu.Lock()
	rate := s.rate
	s.mu.Unlock()
	if rate <= 0 {
		return ramp
	}
	return max(min(int(rate*chunkTime.Seconds()), ramp), min(minCutChunk, ramp))
}

// sent notes when chunk i's body went whole: the next chunk's begins.
func (s *chunkSizer) sent(i uint32) {
	s.mu.Lock()
	if _, ok := s.sentAt[i]; !ok {
		s.sentAt[i] = s.now()
	}
	s.mu.Unlock()
}

// settle notes that chunk i is done with: n bytes answered after its
// request began at began (a zero n for a chunk not measured).
func (s *chunkSizer) settle(i uint32, n int, began time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n > 0 {
		// Chunks go in turn: this body began once the one before it had
		// gone (see inTurn).
		if prev, ok := s.sentAt[i-1]; ok && i > 0 && prev.After(began) {
			began = prev
		}
		if d := s.now().Sub(began); d > 0 {
			s.rate = float64(n) / d.Seconds()
		}
	}
	ch := s.settledCh(i)
	select {
	case <-ch:
	default:
		close(ch)
	}
}
