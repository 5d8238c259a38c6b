package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Local keeps objects as files under one folder, the server's default
// store (`--data-dir`).
//
// Layout: the object "push/1f2e/chunk-7" is the file
// "push+/1f2e+/chunk-7". Folders carry a "+" (outside the key alphabet)
// so that "a/b" and "a/b/c" can both be objects, as they can on S3. The
// folder also holds ".lock", which serialises writes between processes,
// and ".tmp/", where writes are prepared; keys never start with a dot, so
// neither can clash with an object.
//
// A write is prepared in full in ".tmp/" (header, data, fsync) without
// any lock, then committed under the lock by a rename, which a reader
// sees whole or not at all. Only the check of a condition and the rename
// happen under the lock, so writers of megabyte chunks do not wait for
// each other's disks. The lock is an flock on ".lock" (other processes
// sharing the folder) taken under a mutex (other goroutines, so that only
// one thread per process blocks in flock).
type Local struct {
	dir string
	mu  sync.Mutex
}

const (
	localLockFile = ".lock"
	localTmpDir   = ".tmp"
	localDirMark  = "+"
	// staleTmp is the age after which a prepared write that was never
	// committed (its process died) is removed when a store is opened.
	staleTmp = time.Hour
)

var _ Store = (*Local)(nil)

// NewLocal opens the store in dir, creating the folder if needed.
func NewLocal(dir string) (*Local, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("local store %q: %w", dir, err)
	}
	if err := os.MkdirAll(filepath.Join(abs, localTmpDir), 0o700); err != nil {
		return nil, fmt.Errorf("local store: %w", err)
	}
	l := &Local{dir: abs}
	unlock, err := l.lock()
	if err != nil {
		return nil, err
	}
	unlock()
	l.removeStaleTmp()
	return l, nil
}

// Dir is the store's folder.
func (l *Local) Dir() string { return l.dir }

func (l *Local) String() string { return l.dir }

// path is the file of the object key; key must be valid.
func (l *Local) path(key string) string {
	segs := strings.Split(key, "/")
	for i := range len(segs) - 1 {
		segs[i] += localDirMark
	}
	return filepath.Join(l.dir, filepath.Join(segs...))
}

// dirPath is the folder of the keys beginning with dirKey, which is empty
// or ends with a slash.
func (l *Local) dirPath(dirKey string) string {
	if dirKey == "" {
		return l.dir
	}
	segs := strings.Split(strings.TrimSuffix(dirKey, "/"), "/")
	for i := range segs {
		segs[i] += localDirMark
	}
	return filepath.Join(l.dir, filepath.Join(segs...))
}

// lock serialises commits with every other goroutine and process using
// the folder.
func (l *Local) lock() (unlock func(), err error) {
	l.mu.Lock()
	f, err := os.OpenFile(filepath.Join(l.dir, localLockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		l.mu.Unlock()
		return nil, fmt.Errorf("local store lock: %w", err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		l.mu.Unlock()
		return nil, fmt.Errorf("local store lock: %w", err)
	}
	return func() {
		// Closing the last descriptor of the file releases the flock.
		f.Close()
		l.mu.Unlock()
	}, nil
}

// Put implements Store.
func (l *Local) Put(ctx context.Context, key string, data []byte, opt PutOptions) (ETag, error) {
	if err := checkPut(key, opt); err != nil {
		return "", err
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	tmp, etag, err := l.prepare(data, !opt.Volatile)
	if err != nil {
		return "", fmt.Errorf("put %q: %w", key, err)
	}
	defer os.Remove(tmp) // a no-op once the rename has taken it
	if err := ctx.Err(); err != nil {
		return "", err
	}
	target := l.path(key)
	if err := l.commit(key, tmp, target, opt); err != nil {
		return "", err
	}
	// Make the rename durable. The object is already visible; a crash
	// before this sync loses it, as if Put had not returned. A folder
	// that is gone was emptied by a Delete of this very key meanwhile:
	// nothing is left to make durable.
	if opt.Volatile {
		return etag, nil
	}
	if err := syncDir(filepath.Dir(target)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("put %q: %w", key, err)
	}
	return etag, nil
}

// prepare writes header and data to a new file in .tmp, and syncs it
// unless told not to.
func (l *Local) prepare(data []byte, sync bool) (path string, etag ETag, err error) {
	f, err := os.CreateTemp(filepath.Join(l.dir, localTmpDir), "put-*")
	if err != nil {
		return "", "", err
	}
	hdr, nonce := newHeader()
	_, err = f.Write(hdr[:])
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil && sync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", "", err
	}
	return f.Name(), ETag(nonce), nil
}

// commit checks the condition and renames tmp to target, under the lock.
func (l *Local) commit(key, tmp, target string, opt PutOptions) error {
	unlock, err := l.lock()
	if err != nil {
		return err
	}
	defer unlock()
	switch {
	case opt.IfNoneMatch:
		_, err := os.Lstat(target)
		if err == nil {
			return fmt.Errorf("%w: %q exists", ErrPrecondition, key)
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("put %q: %w", key, err)
		}
	case opt.IfMatch != "":
		f, err := os.Open(target)
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w: %q does not exist", ErrPrecondition, key)
		}
		if err != nil {
			return fmt.Errorf("put %q: %w", key, err)
		}
		etag, err := readHeader(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("put %q: %w", key, err)
		}
		if etag != opt.IfMatch {
			return fmt.Errorf("%w: %q is at another version", ErrPrecondition, key)
		}
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o700); err != nil {
		return fmt.Errorf("put %q: %w", key, err)
	}
	if err := os.Rename(tmp, target); err != nil {
		return fmt.Errorf("put %q: %w", key, err)
	}
	return nil
}

// Get implements Store.
func (l *Local) Get(ctx context.Context, key string, dst []byte) ([]byte, ETag, error) {
	if err := ValidKey(key); err != nil {
		return dst[:0], "", err
	}
	if err := ctx.Err(); err != nil {
		return dst[:0], "", err
	}
	// The descriptor keeps the version it opened: a rename that replaces
	// the object meanwhile cannot tear what we read.
	f, err := l.open(key)
	if err != nil {
		return dst[:0], "", err
	}
	defer f.Close()
	info, err := statOpen(f, key)
	if err != nil {
		return dst[:0], "", err
	}
	dst = slices.Grow(dst[:0], int(info.Size))[:info.Size]
	if _, err := io.ReadFull(f, dst); err != nil {
		return dst[:0], "", fmt.Errorf("get %q: %w", key, err)
	}
	return dst, info.ETag, nil
}

// Stat implements Store.
func (l *Local) Stat(ctx context.Context, key string) (Info, error) {
	if err := ValidKey(key); err != nil {
		return Info{}, err
	}
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	f, err := l.open(key)
	if err != nil {
		return Info{}, err
	}
	defer f.Close()
	return statOpen(f, key)
}

func (l *Local) open(key string) (*os.File, error) {
	f, err := os.Open(l.path(key))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, key)
	}
	if err != nil {
		return nil, fmt.Errorf("open %q: %w", key, err)
	}
	return f, nil
}

// statOpen describes the open object file f and leaves f at its data.
func statOpen(f *os.File, key string) (Info, error) {
	fi, err := f.Stat()
	if err != nil {
		return Info{}, fmt.Errorf("stat %q: %w", key, err)
	}
	etag, err := readHeader(f)
	if err != nil {
		return Info{}, fmt.Errorf("read %q: %w", key, err)
	}
	return Info{Key: key, Size: fi.Size() - headerLen, ETag: etag, Modified: fi.ModTime()}, nil
}

func readHeader(f *os.File) (ETag, error) {
	var hdr [headerLen]byte
	if _, err := io.ReadFull(f, hdr[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return "", errNoHeader
		}
		return "", err
	}
	nonce, err := parseHeader(hdr[:])
	return ETag(nonce), err
}

// Delete implements Store.
func (l *Local) Delete(ctx context.Context, key string) error {
	if err := ValidKey(key); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	unlock, err := l.lock()
	if err != nil {
		return err
	}
	defer unlock()
	path := l.path(key)
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete %q: %w", key, err)
	}
	// Remove the folders this left empty, so that expired sessions leave
	// nothing behind. Under the lock no commit can be about to rename
	// into one of them; rmdir fails on the first folder still in use.
	for dir := filepath.Dir(path); dir != l.dir; dir = filepath.Dir(dir) {
		if syscall.Rmdir(dir) != nil {
			break
		}
	}
	return nil
}

// List implements Store.
func (l *Local) List(ctx context.Context, prefix string, fn func(Info) error) error {
	if err := ValidPrefix(prefix); err != nil {
		return err
	}
	// Start in the folder of the prefix's complete segments and match its
	// last, partial segment there: "a/b" lists "a/b", "a/bc" and "a/b/…"
	// from folder "a+".
	dirKey, match := "", prefix
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		dirKey, match = prefix[:i+1], prefix[i+1:]
	}
	return l.walk(ctx, l.dirPath(dirKey), dirKey, match, fn)
}

// walk lists the objects under dir, whose keys begin with keyPrefix, in
// key order, keeping only the entries whose segment begins with match.
func (l *Local) walk(ctx context.Context, dir, keyPrefix, match string, fn func(Info) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // deleted meanwhile, or never written
	}
	if err != nil {
		return fmt.Errorf("list %q: %w", keyPrefix+match, err)
	}
	type entry struct {
		name, seg, order string
		dir              bool
	}
	var list []entry
	for _, e := range entries {
		name := e.Name()
		seg, dir := name, e.IsDir()
		if dir {
			var ok bool
			if seg, ok = strings.CutSuffix(name, localDirMark); !ok {
				continue
			}
		} else if !e.Type().IsRegular() {
			continue
		}
		if !strings.HasPrefix(seg, match) || validSegment(seg) != nil {
			continue // not ours: ".lock", ".tmp", or a file someone left
		}
		// Sorting a folder's objects by segment and its subfolders by
		// segment + "/" gives key order: "a-b" < "a/c" < "a0".
		order := seg
		if dir {
			order += "/"
		}
		list = append(list, entry{name, seg, order, dir})
	}
	slices.SortFunc(list, func(a, b entry) int { return cmp.Compare(a.order, b.order) })
	for _, e := range list {
		path := filepath.Join(dir, e.name)
		if e.dir {
			if err := l.walk(ctx, path, keyPrefix+e.seg+"/", "", fn); err != nil {
				return err
			}
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		info, err := l.Stat(ctx, keyPrefix+e.seg)
		if errors.Is(err, ErrNotFound) || errors.Is(err, errNoHeader) {
			continue // deleted since ReadDir, or a file someone left
		}
		if err != nil {
			return err
		}
		if err := fn(info); err != nil {
			return err
		}
	}
	return nil
}

// removeStaleTmp removes writes that a dead process prepared and never
// committed. Young files may belong to a live process and stay.
func (l *Local) removeStaleTmp() {
	dir := filepath.Join(l.dir, localTmpDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > staleTmp {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// checkPut refuses an invalid key or contradictory options.
func checkPut(key string, opt PutOptions) error {
	if err := ValidKey(key); err != nil {
		return err
	}
	if opt.IfNoneMatch && opt.IfMatch != "" {
		return fmt.Errorf("put %q: IfNoneMatch and IfMatch both set", key)
	}
	return nil
}
