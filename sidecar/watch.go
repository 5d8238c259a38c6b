package sidecar

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/git-relay/git-relay/internal/gitx"
)

type watchCmd struct {
	Name      string `arg:"" optional:"" help:"Sidecar to keep in sync (default: the active one)."`
	Quiet     bool   `short:"q" help:"Print nothing for syncs that succeed; failures are still printed."`
	AcceptNew bool   `help:"Trust the SSH host key on first contact and record it in ~/.ssh/known_hosts."`
}

// Debouncing: a batch of events syncs quiet after its last event, or
// at most maxWait after its first, so that a save that writes a file in
// several steps syncs once, and a stream that never pauses (a build
// writing into a tracked folder) still syncs regularly.
const (
	quiet   = 60 * time.Millisecond
	maxWait = 500 * time.Millisecond
)

// Reconnecting: the first retry after a failed sync comes at once-ish,
// later ones back off up to maxBackoff.
const (
	minBackoff = 200 * time.Millisecond
	maxBackoff = 30 * time.Second
)

// idleCheck is how long the connection may sit unused before a sync
// checks that it still answers.
const idleCheck = 30 * time.Second

func (c *watchCmd) Run(a *app) error {
	// A second Ctrl-C while a sync winds down exits at once.
	secondSignalExits.Store(true)
	defer secondSignalExits.Store(false)
	a.ownConnection = true
	e, err := a.prepare(c.Name, c.AcceptNew)
	if err != nil {
		return err
	}
	defer func() { e.tr.close() }()
	e.applyFirst = true
	// A holder left by an earlier command ends now. Over SSH, other
	// commands run their scripts over this connection while the watch
	// runs.
	if l, ok := takeShareLock(a.ctx, e.r.stateDir(e.name)); ok {
		defer l.unlock()
		if t, ok := e.tr.(*sshTransport); ok {
			defer serveShare(e.r.stateDir(e.name), t, nil, a.logf).close()
		}
	} else {
		a.logf("watch: not sharing the connection: another watch of this sidecar does")
	}
	w, err := newTreeWatcher(a.ctx, e.r, a.logf)
	if err != nil {
		return err
	}
	defer w.close()
	// The watcher is in place before the first sync, so that nothing
	// saved while it runs is missed.
	return interrupted(a.ctx, a.watchLoop(e, w, c.Quiet))
}

// watchLoop syncs once, then after every batch of relevant events, until
// the context ends. A failed sync is tried again with a growing delay
// (after a fresh connection when the connection was the problem).
func (a *app) watchLoop(e *engine, w *treeWatcher, quietOK bool) error {
	ctx := a.ctx
	backoff := time.Duration(0)
	failing := ""
	var retry <-chan time.Time
	// What changed since the last sync that succeeded: the paths, or
	// full when the next snapshot must list everything (the first one
	// included: nothing was watched before).
	var dirty []string
	dirtySeen := map[string]bool{}
	full := true
	var lastUsed time.Time
	syncNow := func() {
		e.sn = nil
		e.dirty, e.dirtyKnown = dirty, !full
		// A connection idle for a while may have died silently (a
		// laptop asleep, another network): a session opened on it
		// could then wait for TCP to give up. One round trip tells.
		if t, ok := e.tr.(*sshTransport); ok && time.Since(lastUsed) > idleCheck && t.dropIfDead(5*time.Second) {
			a.logf("watch: the idle connection is gone; connecting again")
		}
		res, err := a.lockedSync(e, false)
		lastUsed = time.Now()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			msg := gitx.Sanitize(err.Error())
			if t, ok := e.tr.(*sshTransport); ok && t.dropIfDead(5*time.Second) {
				// The connection is gone: the next try dials again.
				msg = "the connection was lost (" + msg + "); reconnecting"
			}
			if backoff == 0 {
				backoff = minBackoff
			} else {
				backoff = min(2*backoff, maxBackoff)
			}
			// One line per new problem, not one per retry.
			if msg != failing {
				fmt.Fprintf(a.stderr, "sidecar %q: sync failed: %s; trying again in the background (every %s at most)\n", e.name, msg, maxBackoff)
				failing = msg
			}
			retry = time.After(backoff)
			return
		}
		backoff, failing, retry = 0, "", nil
		dirty, dirtySeen, full = nil, map[string]bool{}, false
		if !quietOK {
			fmt.Fprintln(a.stderr, res.summary(e.name))
		}
	}
	syncNow()
	var (
		pending  bool
		first    time.Time
		deadline *time.Timer
		timerC   <-chan time.Time
	)
	arm := func() {
		wait := quiet
		if left := maxWait - time.Since(first); left < wait {
			wait = max(left, 0)
		}
		if deadline == nil {
			deadline = time.NewTimer(wait)
		} else {
			deadline.Reset(wait)
		}
		timerC = deadline.C
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-w.errs:
			return err
		case <-w.events:
			if !pending {
				pending, first = true, time.Now()
			}
			arm()
		case <-timerC:
			timerC = nil
			b, err := w.drain(ctx, e)
			if err != nil {
				return err
			}
			pending = false
			full = full || b.full
			for _, p := range b.paths {
				if !dirtySeen[p] {
					dirtySeen[p] = true
					dirty = append(dirty, p)
				}
			}
			if b.sync && retry == nil {
				syncNow()
			}
		case <-retry:
			retry = nil
			syncNow()
		}
	}
}

// treeWatcher watches every folder of the work tree that git does not
// ignore (inotify is not recursive), the git dir for HEAD and index
// changes, and the branch refs, and collects the paths that changed.
type treeWatcher struct {
	r    *repo
	fw   *fsnotify.Watcher
	logf func(string, ...any)
	// events gets a value (non-blocking) whenever paths were added to
	// changed, errs a fatal error.
	events chan struct{}
	errs   chan error
	// The paths seen since the last drain, absolute; overflow is set
	// when the kernel dropped events.
	changed  chan string
	overflow chan struct{}
	done     chan struct{}
	// barrier is a file that drain does not report but notes as seen
	// (sawBarrier): written and removed, its events tell that every
	// event before them has been read.
	barrier    string
	sawBarrier bool
	// hashLen is the repository's object id size; indexNames identifies
	// the set of paths git's index lists, as last read.
	hashLen    int
	indexNames string
}

func newTreeWatcher(ctx context.Context, r *repo, logf func(string, ...any)) (*treeWatcher, error) {
	fw, err := fsnotify.NewBufferedWatcher(4096)
	if err != nil {
		return nil, fmt.Errorf("watch the work tree: %w", err)
	}
	w := &treeWatcher{
		r: r, fw: fw, logf: logf,
		events:   make(chan struct{}, 1),
		errs:     make(chan error, 1),
		changed:  make(chan string, 1<<16),
		overflow: make(chan struct{}, 1),
		done:     make(chan struct{}),
	}
	if f, err := r.objectFormat(ctx); err == nil {
		w.hashLen = f.hashLen
		w.indexNames = w.readIndexNames()
	}
	ignored, err := ignoredDirs(ctx, r)
	if err != nil {
		fw.Close()
		return nil, err
	}
	if err := w.addTree(r.top, ignored); err != nil {
		fw.Close()
		return nil, err
	}
	// HEAD and index of this worktree, and the branches (a commit moves
	// a branch, not HEAD): what tells a commit or a branch switch.
	for _, d := range []string{r.gitDir, r.commonDir} {
		if err := w.add(d); err != nil {
			fw.Close()
			return nil, err
		}
	}
	if err := w.addTree(filepath.Join(r.commonDir, "refs", "heads"), nil); err != nil {
		fw.Close()
		return nil, err
	}
	go w.pump()
	return w, nil
}

func (w *treeWatcher) close() {
	close(w.done)
	w.fw.Close()
}

// ignoredDirs lists the folders git ignores in the work tree, relative
// to the top with a trailing slash: they are not watched.
func ignoredDirs(ctx context.Context, r *repo) (map[string]bool, error) {
	out, err := r.git.Run(ctx, "ls-files", "-z", "--others", "--ignored", "--exclude-standard", "--directory")
	if err != nil {
		return nil, fmt.Errorf("list the ignored folders: %w", err)
	}
	m := map[string]bool{}
	for _, p := range strings.Split(out, "\x00") {
		if strings.HasSuffix(p, "/") {
			m[p] = true
		}
	}
	return m, nil
}

// add watches one folder.
func (w *treeWatcher) add(dir string) error {
	if err := w.fw.Add(dir); err != nil {
		if errors.Is(err, syscall.ENOSPC) {
			return fmt.Errorf("watch %q: the system's limit of watched folders is reached; raise it with `sysctl fs.inotify.max_user_watches=1048576`", dir)
		}
		if errors.Is(err, fs.ErrNotExist) {
			return nil // gone meanwhile
		}
		return fmt.Errorf("watch %q: %w", dir, err)
	}
	return nil
}

// addTree watches root and every folder below it, but git dirs and the
// folders in ignored (relative to the work tree's top, with a slash).
func (w *treeWatcher) addTree(root string, ignored map[string]bool) error {
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		if d.Name() == ".git" && p != root {
			return filepath.SkipDir
		}
		if ignored != nil {
			if rel, err := filepath.Rel(w.r.top, p); err == nil && ignored[filepath.ToSlash(rel)+"/"] {
				return filepath.SkipDir
			}
		}
		return w.add(p)
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("watch the work tree: %w", err)
	}
	return nil
}

// pump moves fsnotify's events to changed and signals events.
func (w *treeWatcher) pump() {
	for {
		select {
		case <-w.done:
			return
		case ev, ok := <-w.fw.Events:
			if !ok {
				return
			}
			select {
			case w.changed <- ev.Name:
			default:
				w.markOverflow()
			}
		case err, ok := <-w.fw.Errors:
			if !ok {
				return
			}
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				w.markOverflow()
			} else {
				w.logf("watching the work tree: %v", err)
				w.markOverflow()
			}
		}
		select {
		case w.events <- struct{}{}:
		default:
		}
	}
}

func (w *treeWatcher) markOverflow() {
	select {
	case w.overflow <- struct{}{}:
	default:
	}
}

// drain takes the paths changed since the last call, watches the new
// folders among them, and says whether any of them calls for a sync:
// a path git does not ignore, or a HEAD or branch that moved.
func (w *treeWatcher) drain(ctx context.Context, e *engine) (b batch, err error) {
	var paths []string
	seen := map[string]bool{}
	overflow := false
	select {
	case <-w.overflow:
		overflow = true
	default:
	}
	for more := true; more; {
		select {
		case p := <-w.changed:
			if !seen[p] {
				seen[p] = true
				paths = append(paths, p)
			}
		default:
			more = false
		}
	}
	if overflow {
		// Events were lost, folders created meanwhile among them: look
		// at the whole tree again.
		ignored, err := ignoredDirs(ctx, w.r)
		if err != nil {
			return b, err
		}
		w.logf("watch: events were lost; syncing the whole tree")
		return batch{sync: true, full: true}, w.addTree(w.r.top, ignored)
	}
	var tree []string // relative to the top
	gitEvent, indexEvent := false, false
	for _, p := range paths {
		if p == filepath.Join(w.r.gitDir, "index") {
			indexEvent = true
		}
		if w.barrier != "" && p == w.barrier {
			w.sawBarrier = true
			continue
		}
		rel, err := filepath.Rel(w.r.top, p)
		if err != nil || rel == ".." || strings.HasPrefix(rel, "../") || inGitDir(rel) || w.inGitDirs(p) {
			gitEvent = true
			continue
		}
		tree = append(tree, filepath.ToSlash(rel))
	}
	relevant, err := w.notIgnored(ctx, tree)
	if err != nil {
		return b, err
	}
	b.paths = relevant
	// Folders that appeared are watched from now on, unless ignored.
	for _, rel := range relevant {
		p := filepath.Join(w.r.top, rel)
		if fi, err := os.Lstat(p); err == nil && fi.IsDir() {
			ignored, err := ignoredDirsUnder(ctx, w.r, rel)
			if err != nil {
				return b, err
			}
			if err := w.addTree(p, ignored); err != nil {
				return b, err
			}
		}
	}
	// git's own files changed: the index may make other files visible
	// (git add -f, git rm --cached), so the next sync lists everything.
	b.full = gitEvent
	if len(relevant) > 0 {
		w.logf("watch: syncing for %d changed path(s): %s", len(relevant), someOf(relevant))
		b.sync = true
		return b, nil
	}
	if gitEvent && e != nil {
		moved, err := w.headMoved(ctx, e)
		if err != nil {
			return b, err
		}
		if moved {
			if indexEvent && w.hashLen != 0 {
				w.indexNames = w.readIndexNames()
			}
			w.logf("watch: syncing: HEAD moved")
			b.sync = true
			return b, nil
		}
	}
	if indexEvent && w.hashLen != 0 {
		// git add -f, git rm --cached: the index lists other paths, and
		// other files are visible. A git status rewrites the index with
		// the same paths, which calls for nothing.
		if names := w.readIndexNames(); names != w.indexNames {
			w.indexNames = names
			w.logf("watch: syncing: the index lists other paths")
			b.sync = true
			return b, nil
		}
	}
	w.logf("watch: %d changed path(s), none to sync (ignored, or git's own files with HEAD unmoved)", len(paths))
	return b, nil
}

// batch is what one drain found.
type batch struct {
	// sync says that the workspace needs a sync.
	sync bool
	// paths are the changed paths git does not ignore, relative to the
	// top; full says they are not the whole story.
	paths []string
	full  bool
}

// readIndexNames identifies the set of paths git's index lists: a hash
// of them in order, or "" when the index cannot be read.
func (w *treeWatcher) readIndexNames() string {
	entries, _, err := readIndex(filepath.Join(w.r.gitDir, "index"), w.hashLen)
	if err != nil {
		return ""
	}
	names := make([]string, 0, len(entries))
	for p := range entries {
		names = append(names, p)
	}
	sort.Strings(names)
	h := sha256.New()
	for _, p := range names {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// inGitDir reports whether rel (relative to the top) is inside a .git
// folder: the repository's or a nested one's.
func inGitDir(rel string) bool {
	rel = filepath.ToSlash(rel)
	return rel == ".git" || strings.HasPrefix(rel, ".git/") || strings.Contains(rel, "/.git/") || strings.HasSuffix(rel, "/.git")
}

// inGitDirs reports whether p is in this worktree's git dir or the
// common one (a worktree's git dir may be outside the work tree).
func (w *treeWatcher) inGitDirs(p string) bool {
	for _, d := range []string{w.r.gitDir, w.r.commonDir} {
		if p == d || strings.HasPrefix(p, d+string(filepath.Separator)) {
			return true
		}
	}
	return false
}

// headMoved reports whether HEAD is at another commit or branch than at
// the last sync. A git status refreshes the index without changing
// anything that matters; a commit or a checkout does.
func (w *treeWatcher) headMoved(ctx context.Context, e *engine) (bool, error) {
	head, branch, err := w.r.head(ctx)
	if err != nil {
		return false, nil // no commits yet, or a checkout half way
	}
	return head != e.st.LastHead || branch != e.st.Branch, nil
}

// notIgnored returns the paths that git does not ignore, with one git
// check-ignore for the batch. Tracked paths are never ignored.
func (w *treeWatcher) notIgnored(ctx context.Context, paths []string) ([]string, error) {
	if len(paths) == 0 {
		return nil, nil
	}
	in := strings.Join(paths, "\x00") + "\x00"
	out, err := w.r.git.RunInput(ctx, strings.NewReader(in), "check-ignore", "--stdin", "-z")
	if err != nil {
		var gerr *gitx.Error
		if errors.As(err, &gerr) && gerr.ExitCode == 1 {
			return paths, nil // none ignored
		}
		return nil, fmt.Errorf("check which changed paths git ignores: %w", err)
	}
	ignored := map[string]bool{}
	for _, p := range strings.Split(out, "\x00") {
		ignored[p] = true
	}
	var keep []string
	for _, p := range paths {
		if !ignored[p] {
			keep = append(keep, p)
		}
	}
	return keep, nil
}

// ignoredDirsUnder is ignoredDirs for the folder rel only.
func ignoredDirsUnder(ctx context.Context, r *repo, rel string) (map[string]bool, error) {
	out, err := r.git.Run(ctx, "ls-files", "-z", "--others", "--ignored", "--exclude-standard", "--directory", "--", rel)
	if err != nil {
		return nil, fmt.Errorf("list the ignored folders in %q: %w", rel, err)
	}
	m := map[string]bool{}
	for _, p := range strings.Split(out, "\x00") {
		if strings.HasSuffix(p, "/") {
			m[p] = true
		}
	}
	return m, nil
}

// someOf names the first few paths, for -v.
func someOf(paths []string) string {
	const n = 5
	if len(paths) <= n {
		return strings.Join(paths, ", ")
	}
	return strings.Join(paths[:n], ", ") + fmt.Sprintf(", and %d more", len(paths)-n)
}
