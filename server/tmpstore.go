package server

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"

	"github.com/git-relay/git-relay/internal/store"
)

// dirStore is a stopgap local folder store until internal/store has its
// own; one process only.
type dirStore struct {
	root string
	mu   sync.Mutex
}

func newDirStore(root string) (*dirStore, error) {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, err
	}
	return &dirStore{root: root}, nil
}

func (d *dirStore) path(key string) (string, error) {
	if key == "" || strings.HasPrefix(key, "/") || strings.Contains(key, "..") || strings.HasPrefix(key, ".") {
		return "", fmt.Errorf("bad key %q", key)
	}
	return filepath.Join(d.root, filepath.FromSlash(key)), nil
}

func etagOf(fi os.FileInfo) store.ETag {
	ino := uint64(0)
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	return store.ETag(fmt.Sprintf("%x-%x-%x", ino, fi.Size(), fi.ModTime().UnixNano()))
}

func (d *dirStore) Put(ctx context.Context, key string, data []byte, opt store.PutOptions) (store.ETag, error) {
	p, err := d.path(key)
	if err != nil {
		return "", err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	fi, err := os.Stat(p)
	switch {
	case opt.IfNoneMatch && err == nil:
		return "", store.ErrPrecondition
	case opt.IfMatch != "" && (err != nil || etagOf(fi) != opt.IfMatch):
		return "", store.ErrPrecondition
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), ".tmp-")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		return "", err
	}
	fi, err = os.Stat(p)
	if err != nil {
		return "", err
	}
	return etagOf(fi), nil
}

func (d *dirStore) Get(ctx context.Context, key string, dst []byte) ([]byte, store.ETag, error) {
	p, err := d.path(key)
	if err != nil {
		return nil, "", err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, "", store.ErrNotFound
	}
	if err != nil {
		return nil, "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, "", err
	}
	n := int(fi.Size())
	if cap(dst) < n {
		dst = make([]byte, n)
	}
	dst = dst[:n]
	if _, err := f.ReadAt(dst, 0); err != nil && n > 0 {
		return nil, "", err
	}
	return dst, etagOf(fi), nil
}

func (d *dirStore) Stat(ctx context.Context, key string) (store.Info, error) {
	p, err := d.path(key)
	if err != nil {
		return store.Info{}, err
	}
	fi, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return store.Info{}, store.ErrNotFound
	}
	if err != nil {
		return store.Info{}, err
	}
	return store.Info{Key: key, Size: fi.Size(), ETag: etagOf(fi), Modified: fi.ModTime()}, nil
}

func (d *dirStore) Delete(ctx context.Context, key string) error {
	p, err := d.path(key)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

func (d *dirStore) List(ctx context.Context, prefix string, fn func(store.Info) error) error {
	var out []store.Info
	err := filepath.WalkDir(d.root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if e.IsDir() || strings.HasPrefix(e.Name(), ".tmp-") {
			return nil
		}
		rel, _ := filepath.Rel(d.root, p)
		key := filepath.ToSlash(rel)
		if !strings.HasPrefix(key, prefix) {
			return nil
		}
		fi, err := e.Info()
		if err != nil {
			return nil
		}
		out = append(out, store.Info{Key: key, Size: fi.Size(), ETag: etagOf(fi), Modified: fi.ModTime()})
		return nil
	})
	if err != nil {
		return err
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	for _, i := range out {
		if err := fn(i); err != nil {
			return err
		}
	}
	return nil
}
