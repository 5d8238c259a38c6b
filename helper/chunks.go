package helper

import (
	"context"
	"fmt"
	"sync"
	"time"
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
