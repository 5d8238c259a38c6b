package payload

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"sync"
)

// Prefix hashes a payload whose chunks arrive out of order, a few at a
// time, so that the hash is ready when the last chunk is: each chunk is
// hashed once every chunk before it has been, straight from memory when
// it is next in line, and read back from the file it was written to when
// it came early. Without it the whole payload would be read and hashed
// again after the download, while everything else waits.
type Prefix struct {
	file      io.ReaderAt
	chunkSize int

	mu     sync.Mutex
	h      hash.Hash
	size   int64
	next   uint32         // the first chunk not hashed yet
	landed map[uint32]int // chunks written but not hashed yet, by length
	buf    []byte
	err    error
}

// NewPrefix hashes the chunks of chunkSize bytes written to file.
func NewPrefix(file io.ReaderAt, chunkSize int) *Prefix {
	return &Prefix{file: file, chunkSize: chunkSize, h: sha256.New(), landed: map[uint32]int{}}
}

// Add records that chunk i, plain, has been written to the file at its
// place.
func (p *Prefix) Add(i uint32, plain []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil || i < p.next {
		return
	}
	if i > p.next {
		p.landed[i] = len(plain)
		return
	}
	p.hash(plain)
	for n, ok := p.landed[p.next]; ok && p.err == nil; n, ok = p.landed[p.next] {
		delete(p.landed, p.next)
		if cap(p.buf) < n {
			p.buf = make([]byte, n)
		}
		if _, err := p.file.ReadAt(p.buf[:n], int64(p.next)*int64(p.chunkSize)); err != nil {
			p.err = fmt.Errorf("read back chunk %d: %w", p.next, err)
			return
		}
		p.hash(p.buf[:n])
	}
}

// Spoil records that a chunk could not be written to the file: the hash
// no longer speaks for it, and Matches says no.
func (p *Prefix) Spoil() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.err = fmt.Errorf("a chunk could not be kept")
}

func (p *Prefix) hash(b []byte) {
	p.h.Write(b)
	p.size += int64(len(b))
	p.next++
}

// Matches says whether the first chunks chunks have been hashed and come
// to size bytes with the given hex SHA-256.
func (p *Prefix) Matches(chunks uint32, size int64, hash string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err == nil && p.next == chunks && len(p.landed) == 0 && p.size == size &&
		hex.EncodeToString(p.h.Sum(nil)) == hash
}
