package helper

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/git-relay/git-relay/internal/seal"
)

// The helper keeps what it needs to resume an interrupted exchange under
// <git dir>/relay/: for a push, its Open message and the tag and size
// of every chunk it sealed; for a fetch whose answer comes in chunks,
// the Open and the chunks that came after its first second (keepAfter).
// Each goes when its exchange ends, whatever the outcome; what an
// interrupted run left is reused by the next run that does the same, or
// removed by any run a day later.

const (
	resumeRoot = "relay"
	resumeAge  = 24 * time.Hour
)

// resumeDir is the folder for one resumable exchange: kind and a hash of
// what it does.
func (h *Helper) resumeDir(kind string, what ...[]byte) string {
	sum := sha256.New()
	sum.Write([]byte(h.client.Key.ID + "\x00" + h.repo))
	for _, w := range what {
		sum.Write([]byte{0})
		sum.Write(w)
	}
	return filepath.Join(h.git.GitDir, resumeRoot, kind+"-"+hex.EncodeToString(sum.Sum(nil))[:32])
}

// cleanResume removes what interrupted runs left more than a day ago.
func (h *Helper) cleanResume() {
	root := filepath.Join(h.git.GitDir, resumeRoot)
	entries, err := os.ReadDir(root)
	if err != nil {
		return
	}
	for _, e := range entries {
		if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > resumeAge {
			os.RemoveAll(filepath.Join(root, e.Name()))
		}
	}
	_ = os.Remove(root) // when empty
}

// pushResume is a push's resume record.
type pushResume struct {
	dir    string
	open   []byte                // the exchange's Open bytes
	sealed [][seal.Overhead]byte // tags of the chunks sealed in earlier runs
	sizes  []int                 // and their sizes, which this run cuts them to again
	f      *os.File              // appends this run's records
	n      int                   // chunks sealed in this run
}

// The record of each sealed chunk: its AES-GCM tag and its plaintext's
// size. Under the push's key and the chunk's nonce, which a resumed run
// shares, two plaintexts that differ seal to ciphertexts that differ, and
// those to the same tag with a chance of about their length in blocks
// over 2^128: the tag tells the same chunk from another as well as a
// hash of the plaintext, and comes with the seal, where the hash took a
// pass over every byte.
const (
	sealedFile = "tags"
	sealedLen  = seal.Overhead + 4
)

// findPushResume returns the record of an interrupted push that did the
// same, or nil.
func findPushResume(dir string) *pushResume {
	open, err := os.ReadFile(filepath.Join(dir, "open"))
	if err != nil {
		return nil
	}
	for _, old := range []string{"sealed", "chunks"} {
		if _, err := os.Stat(filepath.Join(dir, old)); err == nil {
			// An older helper's record (without the sizes, or with
			// hashes of the plaintext): nothing this run seals can be
			// checked against it, so its exchange is not resumed.
			os.RemoveAll(dir)
			return nil
		}
	}
	recs, _ := os.ReadFile(filepath.Join(dir, sealedFile))
	p := &pushResume{dir: dir, open: open}
	for len(recs) >= sealedLen {
		p.sealed = append(p.sealed, [seal.Overhead]byte(recs[:seal.Overhead]))
		p.sizes = append(p.sizes, int(binary.BigEndian.Uint32(recs[seal.Overhead:sealedLen])))
		recs = recs[sealedLen:]
	}
	return p
}

// cutTo returns the sizes an earlier run cut its chunks to (nil for a
// nil record).
func (p *pushResume) cutTo() []int {
	if p == nil {
		return nil
	}
	return p.sizes
}

// newPushResume starts a record for a push.
func newPushResume(dir string, open []byte) (*pushResume, error) {
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "open"), open, 0o600); err != nil {
		return nil, err
	}
	return &pushResume{dir: dir, open: open}, nil
}

// errDiverged is a resumed push whose bundle came out different this time:
// what was sealed must never be sealed with other bytes under the same
// key, so the push starts over as a new exchange.
var errDiverged = errors.New("the bundle differs from the interrupted push's")

// record notes that chunk i, whose plaintext of size bytes sealed with
// tag, is about to be sent, and says whether an earlier run sealed the
// very same bytes there. A chunk an earlier run sealed with other bytes
// is errDiverged, and must not be sent.
func (p *pushResume) record(i uint32, size int, tag []byte) (bool, error) {
	sum := [seal.Overhead]byte(tag)
	if int(i) < len(p.sealed) {
		if p.sealed[i] != sum {
			return false, errDiverged
		}
		return true, nil
	}
	if int(i) != len(p.sealed)+p.n {
		return false, errDiverged // chunks come in order; anything else is a bug
	}
	if p.f == nil {
		f, err := os.OpenFile(filepath.Join(p.dir, sealedFile), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return false, err
		}
		// Whole records only, after whatever an earlier run cut short.
		if err := f.Truncate(int64(len(p.sealed) * sealedLen)); err != nil {
			f.Close()
			return false, err
		}
		p.f = f
	}
	// One write per record: a run cut off leaves whole records, or a
	// partial last one that findPushResume ignores.
	rec := binary.BigEndian.AppendUint32(sum[:], uint32(size))
	if _, err := p.f.Write(rec); err != nil {
		return false, err
	}
	p.n++
	return false, nil
}

// remove ends the record.
func (p *pushResume) remove() {
	if p == nil {
		return
	}
	if p.f != nil {
		p.f.Close()
	}
	os.RemoveAll(p.dir)
	_ = os.Remove(filepath.Dir(p.dir))
}

// fetchCache keeps a chunked answer's chunks as they come, once its
// download has run for keepAfter. Its folder is made when the first
// chunk is kept: a fetch that ends sooner touches no file for it.
type fetchCache struct {
	dir string
	mu  sync.Mutex
	// open is the exchange's Open, written beside the first chunk kept;
	// nil once it is (or for a cache an earlier run left).
	open []byte
}

// findFetchCache returns the Open bytes and cache of an interrupted fetch
// that sent the same request, or nil.
func findFetchCache(dir string) ([]byte, *fetchCache) {
	open, err := os.ReadFile(filepath.Join(dir, "open"))
	if err != nil {
		return nil, nil
	}
	return open, &fetchCache{dir: dir}
}

// newFetchCache is the cache of a new fetch exchange, whose Open is open.
func newFetchCache(dir string, open []byte) *fetchCache {
	return &fetchCache{dir: dir, open: open}
}

func (c *fetchCache) path(i uint32) string {
	return filepath.Join(c.dir, strconv.FormatUint(uint64(i), 10))
}

// chunk returns chunk i's answer as it came, or nil.
func (c *fetchCache) chunk(i uint32) []byte {
	c.mu.Lock()
	made := c.open == nil
	c.mu.Unlock()
	if !made {
		return nil
	}
	b, err := os.ReadFile(c.path(i))
	if err != nil {
		return nil
	}
	return b
}

// keep stores chunk i's answer; a failure only costs a resume.
func (c *fetchCache) keep(i uint32, b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.open != nil {
		// What an earlier run left under the name is not this exchange's.
		os.RemoveAll(c.dir)
		if os.MkdirAll(c.dir, 0o700) != nil || os.WriteFile(filepath.Join(c.dir, "open"), c.open, 0o600) != nil {
			return
		}
		c.open = nil
	}
	tmp := c.path(i) + ".tmp"
	if os.WriteFile(tmp, b, 0o600) == nil {
		_ = os.Rename(tmp, c.path(i))
	}
}

func (c *fetchCache) forget(i uint32) { os.Remove(c.path(i)) }

func (c *fetchCache) remove() {
	if c == nil {
		return
	}
	os.RemoveAll(c.dir)
	_ = os.Remove(filepath.Dir(c.dir))
}
