package sidecar

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// syncLock serialises syncs of one sidecar: the foreground command, the
// hook's background worker, another terminal. It is an flock, so a
// crashed holder releases it with its last file descriptor.
type syncLock struct{ f *os.File }

func lockPath(stateDir string) string  { return filepath.Join(stateDir, "lock") }
func dirtyPath(stateDir string) string { return filepath.Join(stateDir, "dirty") }

func openLockFile(stateDir string) (*os.File, error) {
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return nil, fmt.Errorf("create sidecar state folder: %w", err)
	}
	f, err := os.OpenFile(lockPath(stateDir), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open sync lock: %w", err)
	}
	return f, nil
}

// tryLock takes the lock if it is free.
func tryLock(stateDir string) (*syncLock, bool, error) {
	f, err := openLockFile(stateDir)
	if err != nil {
		return nil, false, err
	}
	ok, err := tryFlock(f)
	if err != nil || !ok {
		return nil, false, err
	}
	return &syncLock{f: f}, true, nil
}

// tryFlock takes an exclusive flock on f if it is free, and closes f
// when it does not.
func tryFlock(f *os.File) (bool, error) {
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return false, nil
		}
		return false, fmt.Errorf("take lock %s: %w", f.Name(), err)
	}
	return true, nil
}

// waitLock takes the lock, waiting for another sync to finish; it says so
// on w when the wait is noticeable.
func waitLock(ctx context.Context, stateDir string, w io.Writer) (*syncLock, error) {
	told := false
	start := time.Now()
	for {
		l, ok, err := tryLock(stateDir)
		if err != nil || ok {
			return l, err
		}
		if !told && time.Since(start) > 500*time.Millisecond && w != nil {
			fmt.Fprintln(w, "waiting for another sync of this sidecar to finish...")
			told = true
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (l *syncLock) unlock() {
	if l != nil && l.f != nil {
		_ = syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
		l.f.Close()
		l.f = nil
	}
}

// syncRunning reports whether a sync holds the lock.
func syncRunning(stateDir string) bool {
	if _, err := os.Stat(lockPath(stateDir)); err != nil {
		return false
	}
	l, ok, err := tryLock(stateDir)
	if err != nil {
		return false
	}
	if ok {
		l.unlock()
		return false
	}
	return true
}

// busy reports whether a sync holds the lock or one is pending.
func busy(stateDir string) bool {
	if _, err := os.Stat(dirtyPath(stateDir)); err == nil {
		return true
	}
	l, ok, err := tryLock(stateDir)
	if err != nil {
		return false
	}
	if ok {
		l.unlock()
		return false
	}
	return true
}
