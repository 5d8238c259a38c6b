package helper

import (
	"context"
	"sync"
	"time"
)

// chunkWorkers is how many chunks are on their way at once, in either
// direction: enough to keep the link busy while the other side checks and
// stores the previous one, few enough that memory stays at a handful of
// chunks whatever the payload's size.
const chunkWorkers = 3

// eachChunk runs move for chunks 0..count-1, chunkWorkers at a time. Each
// worker has its own number (0..chunkWorkers-1), so move can keep buffers
// per worker. move returns how many bytes it moved; the first error stops
// the others. Progress is shown as verb N/M chunks.
func (h *Helper) eachChunk(ctx context.Context, verb string, count uint32, move func(ctx context.Context, worker int, i uint32) (int64, error)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	var (
		mu       sync.Mutex
		moved    int64
		done     uint32
		firstErr error
	)
	next := make(chan uint32)
	var wg sync.WaitGroup
	for w := 0; w < chunkWorkers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				n, err := move(ctx, w, i)
				mu.Lock()
				if err != nil {
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					cancel()
					return
				}
				moved += n
				done++
				h.ui.status("%s %d/%d chunks, %s, %s", verb, done, count, humanBytes(moved), rate(moved, time.Since(start)))
				mu.Unlock()
			}
		}()
	}
feed:
	for i := uint32(0); i < count; i++ {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	h.ui.done("%s %d/%d chunks, %s, %s, done.", verb, count, count, humanBytes(moved), rate(moved, time.Since(start)))
	return nil
}
