package payload

import (
	"fmt"
	"io"
	"sync"
)

// Ordered reads back, as one stream and in order, a payload whose chunks
// are written to a file out of order, a few at a time: Read waits for the
// next chunk to land and ends after the final one. It lets a consumer
// (git index-pack, for a fetch) work while the download goes on, with no
// more memory than a read buffer: the chunks wait in the file.
type Ordered struct {
	file      io.ReaderAt
	chunkSize int

	mu     sync.Mutex
	cond   *sync.Cond
	landed map[uint32]int // chunks written, by length
	final  int64          // the final chunk's index, or -1
	next   uint32         // the chunk being read
	off    int            // how much of it has been read
	err    error
}

// NewOrdered reads the chunks of chunkSize bytes written to file.
func NewOrdered(file io.ReaderAt, chunkSize int) *Ordered {
	o := &Ordered{file: file, chunkSize: chunkSize, landed: map[uint32]int{}, final: -1}
	o.cond = sync.NewCond(&o.mu)
	return o
}

// Add records that chunk i, n bytes, is in the file; final marks the
// payload's last chunk.
func (o *Ordered) Add(i uint32, n int, final bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if i < o.next {
		return
	}
	o.landed[i] = n
	if final && o.final < 0 {
		o.final = int64(i)
	}
	o.cond.Broadcast()
}

// Abort ends the stream with err: the reader gets it instead of waiting.
func (o *Ordered) Abort(err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.err == nil {
		o.err = err
	}
	o.cond.Broadcast()
}

// Read reads the payload in order.
func (o *Ordered) Read(p []byte) (int, error) {
	o.mu.Lock()
	for {
		if o.err != nil {
			o.mu.Unlock()
			return 0, o.err
		}
		if o.final >= 0 && int64(o.next) > o.final {
			o.mu.Unlock()
			return 0, io.EOF
		}
		if _, ok := o.landed[o.next]; ok {
			break
		}
		o.cond.Wait()
	}
	i, n, off := o.next, o.landed[o.next], o.off
	o.mu.Unlock()
	// A landed chunk does not change: read it without the lock.
	m := min(len(p), n-off)
	if m > 0 {
		if _, err := o.file.ReadAt(p[:m], int64(i)*int64(o.chunkSize)+int64(off)); err != nil {
			err = fmt.Errorf("read back chunk %d: %w", i, err)
			o.Abort(err)
			return 0, err
		}
	}
	o.mu.Lock()
	o.off += m
	if o.off >= n {
		delete(o.landed, i)
		o.next++
		o.off = 0
	}
	o.mu.Unlock()
	return m, nil
}
