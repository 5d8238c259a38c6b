package sidecar

import (
	"bytes"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/git-relay/git-relay/internal/gitx"
)

// The snapshot is the tree of what the user sees in the work tree: every
// tracked file and every untracked file that is not ignored, inside
// submodules and nested repositories too, with the bytes that are on
// disk. It is built apart from the user's repository, so that none of
// the repository's own machinery stands between the files and the tree:
//
//   - A private git dir (the "shadow") whose info/attributes, the
//     attributes source that wins over every .gitattributes, unsets text,
//     eol, filter, ident and working-tree-encoding for every path, and
//     whose config turns autocrlf, fsmonitor and sparse checkout off. No
//     clean filter runs and no line ending is converted, whatever the
//     repository, its .gitattributes or any config say.
//   - A private index, which git fills from the list of paths the user
//     sees. It carries none of the user index's assume-unchanged,
//     skip-worktree or sparse bits, and its cached stat data describes the
//     raw files, so an edit under any of those flags is seen.
//   - A private object store (the user's store is an alternate, read
//     only), so the user's repository never receives the raw versions,
//     snapshot trees or anything else of ours.
//
// Which paths the user sees is asked of the user's own git (ls-files with
// the standard excludes), in each nested repository in turn; the nested
// repositories' files enter the one snapshot under their folder, so that
// one tree, one pack and one checkout carry all of them.
type snapshotter struct {
	r      *repo
	dir    string // per-worktree cache folder
	shadow string // the private git dir
	format objectFormat
	logf   func(format string, args ...any)
}

// objectFormat is the repository's hash: sha1 or sha256.
type objectFormat struct {
	name    string
	hashLen int
}

func (f objectFormat) newHash() hash.Hash {
	if f.name == "sha256" {
		return sha256.New()
	}
	return sha1.New()
}

func (f objectFormat) zeroID() string { return strings.Repeat("0", 2*f.hashLen) }

// emptyTree is the id of the empty tree.
func (f objectFormat) emptyTree() string {
	h := f.newHash()
	h.Write([]byte("tree 0\x00"))
	return fmt.Sprintf("%x", h.Sum(nil))
}

func (r *repo) objectFormat(ctx context.Context) (objectFormat, error) {
	out, err := r.git.Run(ctx, "rev-parse", "--show-object-format")
	if err != nil {
		return objectFormat{}, fmt.Errorf("read the repository's object format: %w", err)
	}
	switch out {
	case "sha1":
		return objectFormat{"sha1", 20}, nil
	case "sha256":
		return objectFormat{"sha256", 32}, nil
	}
	return objectFormat{}, fmt.Errorf("unknown object format %q", out)
}

func newSnapshotter(ctx context.Context, r *repo, name string, logf func(string, ...any)) (*snapshotter, error) {
	f, err := r.objectFormat(ctx)
	if err != nil {
		return nil, err
	}
	dir := r.cacheDir(name)
	return &snapshotter{r: r, dir: dir, shadow: filepath.Join(dir, "git"), format: f, logf: logf}, nil
}

// shadowVersion changes whenever the shadow's config or attributes do, so
// that an older shadow is rewritten.
const shadowVersion = "git-sidecar shadow 3\n"

// rawAttributes is what makes git take the bytes as they are: in
// info/attributes it wins over every .gitattributes and
// core.attributesFile.
const rawAttributes = "* -text -eol -filter -ident -working-tree-encoding\n"

// ensureShadow creates the private git dir, or rewrites its config when
// it comes from another version.
func (s *snapshotter) ensureShadow(ctx context.Context) error {
	stamp := filepath.Join(s.shadow, "info", "sidecar-version")
	if b, err := os.ReadFile(stamp); err == nil && string(b) == shadowVersion {
		return nil
	}
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return fmt.Errorf("create the snapshot folder: %w", err)
	}
	if _, err := os.Stat(filepath.Join(s.shadow, "HEAD")); err != nil {
		args := []string{"init", "-q", "--bare", "--template="}
		if s.format.name != "sha1" {
			args = append(args, "--object-format="+s.format.name)
		}
		if _, err := (gitx.Repo{Dir: s.dir}).Run(ctx, append(args, s.shadow)...); err != nil {
			return fmt.Errorf("create the snapshot repository: %w", err)
		}
	}
	format := "\trepositoryformatversion = 0\n"
	ext := ""
	if s.format.name != "sha1" {
		format = "\trepositoryformatversion = 1\n"
		ext = "[extensions]\n\tobjectFormat = " + s.format.name + "\n"
	}
	// Every setting that could change which bytes or which files git
	// records, pinned; the user's global config cannot override these.
	config := "[core]\n" + format +
		"\tbare = false\n\tfilemode = true\n\tsymlinks = true\n\tignorecase = false\n" +
		"\tautocrlf = false\n\tsafecrlf = false\n\tfsmonitor = false\n" +
		"\tsparseCheckout = false\n\tsplitIndex = false\n\tuntrackedCache = false\n" +
		"\tcheckStat = default\n\ttrustctime = true\n\tpreloadIndex = true\n" +
		"[index]\n\tversion = 4\n\tsparse = false\n" +
		"[gc]\n\tauto = 0\n" + ext
	for _, d := range []string{"info", "objects/info", "objects/pack", "refs"} {
		if err := os.MkdirAll(filepath.Join(s.shadow, d), 0o755); err != nil {
			return fmt.Errorf("prepare the snapshot repository: %w", err)
		}
	}
	for name, content := range map[string]string{
		"config":          config,
		"info/attributes": rawAttributes,
	} {
		if err := os.WriteFile(filepath.Join(s.shadow, name), []byte(content), 0o644); err != nil {
			return fmt.Errorf("prepare the snapshot repository: %w", err)
		}
	}
	// index.version only applies to new index files.
	if _, err := os.Stat(s.indexPath()); err == nil {
		if _, err := s.git(s.indexPath()).Run(ctx, "update-index", "--index-version", "4"); err != nil {
			return fmt.Errorf("prepare the snapshot index: %w", err)
		}
	}
	return os.WriteFile(stamp, []byte(shadowVersion), 0o644)
}

// git runs git on the snapshot: the shadow git dir, the user's work tree,
// the given index, our object store with the user's as an alternate. The
// user's `git -c` settings are not passed: nothing may turn conversions
// back on.
func (s *snapshotter) git(index string) gitx.Repo {
	return gitx.Repo{
		Dir:    s.r.top,
		GitDir: s.shadow,
		Env: []string{
			"GIT_WORK_TREE=" + s.r.top,
			"GIT_INDEX_FILE=" + index,
			"GIT_OBJECT_DIRECTORY=" + filepath.Join(s.shadow, "objects"),
			"GIT_ALTERNATE_OBJECT_DIRECTORIES=" + filepath.Join(s.r.commonDir, "objects"),
			"GIT_CONFIG_NOSYSTEM=1",
		},
	}
}

func (s *snapshotter) indexPath() string { return filepath.Join(s.dir, "index") }
func (s *snapshotter) bigPath() string   { return filepath.Join(s.dir, "big.json") }
func (s *snapshotter) sigDir() string    { return filepath.Join(s.dir, "sigs") }

// bigEntry is a big file as last read: its stat data and blob id.
type bigEntry struct {
	Mode    uint32 `json:"mode"`
	Size    int64  `json:"size"`
	MtimeNS int64  `json:"mtime_ns"`
	CtimeNS int64  `json:"ctime_ns"`
	Ino     uint32 `json:"ino"`
	ID      string `json:"id"`
	// Racy marks an entry read so soon after the file was written that
	// a later write in the same clock tick could not be told apart: the
	// next snapshot reads it again.
	Racy bool `json:"racy,omitempty"`
}

func (b bigEntry) same(st fileStat) bool {
	return !b.Racy && b.Mode == st.mode && b.Size == st.size && b.MtimeNS == st.mtime &&
		b.CtimeNS == int64(st.ctimeS)*1e9+int64(st.ctimeNS) && b.Ino == st.ino
}

// snapshot is one snapshot of the work tree.
type snapshot struct {
	tree string
	// big are the big files in the tree, by path.
	big map[string]bigEntry
	// plans are deltas for big files that changed, by new blob id,
	// against the version read before at the same path.
	plans map[string]*deltaPlan
	// touched counts the paths whose content was looked at again.
	touched int
}

// bigByID maps each big blob id to one path holding it.
func (sn *snapshot) bigByID() map[string]string {
	m := make(map[string]string, len(sn.big))
	for p, b := range sn.big {
		if _, ok := m[b.ID]; !ok {
			m[b.ID] = p
		}
	}
	return m
}

// take records the work tree. With persist (a sync), the index, the big
// file table and new signatures are kept for the next snapshot and new
// blobs are written to the private store; without (status), everything is
// computed on a copy and nothing is written.
func (s *snapshotter) take(ctx context.Context, persist bool) (*snapshot, error) {
	if err := s.ensureShadow(ctx); err != nil {
		return nil, err
	}
	index := s.indexPath()
	if !persist {
		tmp := filepath.Join(s.dir, fmt.Sprintf("index.status.%d", os.Getpid()))
		if err := copyFile(index, tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("snapshot the work tree: %w", err)
		}
		defer os.Remove(tmp)
		index = tmp
	}
	start := time.Now()
	// Our index is read while the work tree is listed.
	type indexRead struct {
		entries map[string]*indexEntry
		mtime   int64
		err     error
	}
	idx := make(chan indexRead, 1)
	go func() {
		e, m, err := readIndex(index, s.format.hashLen)
		idx <- indexRead{e, m, err}
	}()
	files, err := s.visibleFiles(ctx)
	ir := <-idx
	if err != nil {
		return nil, err
	}
	listed := time.Since(start)
	entries, indexMtime, ierr := ir.entries, ir.mtime, ir.err
	if ierr != nil && !errors.Is(ierr, fs.ErrNotExist) {
		// Let git look at every path.
		s.logf("snapshot index not read (%v); checking every file", ierr)
		entries = nil
	}
	if entries == nil {
		entries = map[string]*indexEntry{}
	}
	oldBig := s.loadBig()
	sn := &snapshot{big: map[string]bigEntry{}, plans: map[string]*deltaPlan{}}
	var update []string   // paths for git to look at
	var info bytes.Buffer // index-info lines: big files set, paths removed
	for _, f := range files {
		e := entries[f.path]
		if e != nil {
			e.seen = true
		}
		if f.st.mode != 0o120000 && f.st.size >= bigFileSize {
			b, err := s.bigFile(f, oldBig, sn, persist)
			if err != nil {
				return nil, err
			}
			sn.big[f.path] = b
			if e == nil || e.id() != b.ID || e.mode != b.Mode {
				fmt.Fprintf(&info, "%o %s\t%s\x00", b.Mode, b.ID, f.path)
			}
			continue
		}
		if e != nil && e.clean(f.st, indexMtime) {
			continue
		}
		update = append(update, f.path)
	}
	for p, e := range entries {
		if !e.seen {
			fmt.Fprintf(&info, "0 %s\t%s\x00", s.format.zeroID(), p)
		}
	}
	sn.touched = len(update) + strings.Count(info.String(), "\x00")
	g := s.git(index)
	if info.Len() > 0 {
		if _, err := g.RunInput(ctx, &info, "update-index", "-z", "--index-info"); err != nil {
			return nil, fmt.Errorf("snapshot the work tree: %w", err)
		}
	}
	if len(update) > 0 {
		args := []string{"update-index", "-z", "--add", "--remove", "--replace"}
		if !persist {
			args = append(args, "--info-only")
		}
		in := strings.Join(update, "\x00") + "\x00"
		if _, err := g.RunInput(ctx, strings.NewReader(in), append(args, "--stdin")...); err != nil {
			return nil, fmt.Errorf("snapshot the work tree: %w", err)
		}
	}
	// The tree of an index nobody touched is the one written last time
	// (status works on a copy of the index, which is the same then).
	treeFile := s.indexPath() + ".tree"
	if sn.touched == 0 {
		if t := cachedTree(s.indexPath(), treeFile); t != "" {
			sn.tree = t
		}
	}
	if sn.tree == "" {
		if _, err := os.Stat(index); errors.Is(err, fs.ErrNotExist) {
			sn.tree = s.format.emptyTree() // nothing at all to see
		} else {
			// Big blobs are not in any local store (see bigFile).
			tree, err := g.Run(ctx, "write-tree", "--missing-ok")
			if err != nil {
				return nil, fmt.Errorf("snapshot the work tree: %w", err)
			}
			sn.tree = tree
			if persist {
				saveCachedTree(s.indexPath(), treeFile, tree)
			}
		}
	}
	if persist {
		if err := s.saveBig(sn.big); err != nil {
			return nil, err
		}
	}
	s.logf("snapshot: %d paths listed and looked at in %s, %d read again, %s in all",
		len(files), listed.Round(time.Millisecond), sn.touched, time.Since(start).Round(time.Millisecond))
	return sn, nil
}

// cachedTree returns the tree recorded for the index file as it is now.
func cachedTree(index, treeFile string) string {
	b, err := os.ReadFile(treeFile)
	if err != nil {
		return ""
	}
	stamp, tree, _ := strings.Cut(strings.TrimSpace(string(b)), " ")
	if stamp != fileStamp(index) {
		return ""
	}
	return tree
}

func saveCachedTree(index, treeFile, tree string) {
	_ = os.WriteFile(treeFile, []byte(fileStamp(index)+" "+tree+"\n"), 0o644)
}

// fileStamp identifies a version of a file by size, time and inode.
func fileStamp(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return ""
	}
	st, ok := statOf(fi)
	if !ok {
		return ""
	}
	return fmt.Sprintf("%d:%d:%d", fi.Size(), st.mtime, st.ino)
}

// bigFile returns the entry of a big file, reading it only when it may
// have changed. A file read again gets a new signature and, when its
// previous version's signature is known, a delta plan against it.
//
// Big blobs are never written to an object store here: the workspace
// gets them from the file itself (or as a delta), and the next sync needs
// only their signature. That keeps a 40 MiB edit from costing a 40 MiB
// compressed write on every sync.
func (s *snapshotter) bigFile(f visibleFile, old map[string]bigEntry, sn *snapshot, persist bool) (bigEntry, error) {
	prev, had := old[f.path]
	if had && prev.same(f.st) {
		return prev, nil
	}
	var base *signature
	if had && persist && prev.Size <= maxDeltaFile && f.st.size <= maxDeltaFile {
		base, _ = readSigFile(filepath.Join(s.sigDir(), prev.ID))
	}
	var res bigRead
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		res, err = readBigFile(filepath.Join(s.r.top, f.path), f.st, s.format, base, prev.ID, persist)
		if !errors.Is(err, errFileChanged) {
			break
		}
		// It changed while we read it: look again.
		fi, serr := os.Lstat(filepath.Join(s.r.top, f.path))
		if serr != nil {
			return bigEntry{}, fmt.Errorf("read %s: %w", f.path, serr)
		}
		if f.st, _ = statOf(fi); !fi.Mode().IsRegular() {
			return bigEntry{}, fmt.Errorf("read %s: it stopped being a regular file", f.path)
		}
	}
	if err != nil {
		return bigEntry{}, fmt.Errorf("read %s: %w", f.path, err)
	}
	sn.touched++
	b := bigEntry{
		Mode: f.st.mode, Size: f.st.size, MtimeNS: f.st.mtime,
		CtimeNS: int64(f.st.ctimeS)*1e9 + int64(f.st.ctimeNS), Ino: f.st.ino, ID: res.id,
		// A write in the same clock tick as the one we saw would leave
		// the same times; within a second of it, read again next time.
		Racy: time.Now().UnixNano()-f.st.mtime < int64(time.Second),
	}
	if persist {
		if res.sig != nil {
			if err := s.saveSig(res.id, res.sig); err != nil {
				return bigEntry{}, err
			}
		}
		if res.plan != nil && res.id != prev.ID {
			sn.plans[res.id] = res.plan
		}
	}
	return b, nil
}

func (s *snapshotter) saveSig(id string, sig *signature) error {
	if err := os.MkdirAll(s.sigDir(), 0o755); err != nil {
		return fmt.Errorf("keep a file signature: %w", err)
	}
	p := filepath.Join(s.sigDir(), id)
	if _, err := os.Stat(p); err == nil {
		return nil
	}
	tmp, err := os.CreateTemp(s.sigDir(), "sig.*.tmp")
	if err != nil {
		return fmt.Errorf("keep a file signature: %w", err)
	}
	if err := sig.writeTo(tmp); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("keep a file signature: %w", err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("keep a file signature: %w", err)
	}
	return os.Rename(tmp.Name(), p)
}

// pruneSigs drops the signatures of blobs that are neither in keep nor
// were used within the last day.
func (s *snapshotter) pruneSigs(keep map[string]bool) {
	ents, err := os.ReadDir(s.sigDir())
	if err != nil {
		return
	}
	for _, e := range ents {
		if keep[e.Name()] {
			_ = os.Chtimes(filepath.Join(s.sigDir(), e.Name()), time.Now(), time.Now())
			continue
		}
		if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > 24*time.Hour {
			_ = os.Remove(filepath.Join(s.sigDir(), e.Name()))
		}
	}
}

func (s *snapshotter) loadBig() map[string]bigEntry {
	m := map[string]bigEntry{}
	b, err := os.ReadFile(s.bigPath())
	if err == nil {
		_ = json.Unmarshal(b, &m)
	}
	return m
}

func (s *snapshotter) saveBig(m map[string]bigEntry) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	tmp := s.bigPath() + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("save the big file table: %w", err)
	}
	return os.Rename(tmp, s.bigPath())
}

// bigRead is what one read of a big file found.
type bigRead struct {
	id   string
	sig  *signature
	plan *deltaPlan
}

// readBigFile reads a big file once: its blob id, and with full also its
// signature and (given the previous version's signature) a delta plan.
// It fails with errFileChanged when the file changed while being read.
func readBigFile(path string, st fileStat, format objectFormat, base *signature, baseID string, full bool) (bigRead, error) {
	f, err := os.Open(path)
	if err != nil {
		return bigRead{}, err
	}
	defer f.Close()
	h := format.newHash()
	fmt.Fprintf(h, "blob %d\x00", st.size)
	sinks := []io.Writer{h}
	var sb *sigBuilder
	var m *matcher
	if full {
		sb = newSigBuilder(st.size)
		if base != nil {
			// The matcher sees each write first, so the signature can
			// take the checksums of the blocks it found unchanged.
			m = newMatcher(base, baseID)
			sinks = append(sinks, m)
			if base.blockSize == sb.sig.blockSize {
				sb.known = m.knownBlock
			}
		}
		sinks = append(sinks, sb)
	}
	n, err := io.CopyBuffer(io.MultiWriter(sinks...), f, make([]byte, 1<<20))
	if err != nil {
		return bigRead{}, err
	}
	fi, err := f.Stat()
	if err != nil {
		return bigRead{}, err
	}
	if now, _ := statOf(fi); n != st.size || now.size != st.size || now.mtime != st.mtime {
		return bigRead{}, errFileChanged
	}
	res := bigRead{id: fmt.Sprintf("%x", h.Sum(nil))}
	if sb != nil {
		res.sig = sb.done()
	}
	if m != nil {
		plan := m.finish(n)
		// A delta that inserts most of the file is not worth its
		// instructions.
		if plan.literal <= n/2 {
			res.plan = plan
		}
	}
	return res, nil
}

// visibleFile is one path the user sees, with its stat data.
type visibleFile struct {
	path string // relative to the top of the work tree, with '/'
	st   fileStat
}

// visibleFiles lists what the user sees: the files and symlinks that
// `git ls-files --cached --others --exclude-standard` names in the work
// tree and, recursively, in every submodule and nested repository found
// on disk. Paths that are missing from disk (deleted, or outside a sparse
// checkout) are left out: the snapshot holds what the work tree holds.
func (s *snapshotter) visibleFiles(ctx context.Context) ([]visibleFile, error) {
	var out []visibleFile
	pending := []string{""}
	for len(pending) > 0 {
		prefix := pending[0]
		pending = pending[1:]
		files, nested, err := s.listRepo(ctx, prefix)
		if err != nil {
			return nil, err
		}
		out = append(out, files...)
		// A tracked path that is a folder is an initialized submodule
		// when it holds a .git; otherwise (an uninitialized submodule)
		// it shows nothing.
		for _, d := range nested {
			if _, err := os.Lstat(filepath.Join(s.r.top, d, ".git")); err == nil {
				pending = append(pending, d)
			}
		}
	}
	return out, nil
}

// listRepo lists the files of the repository at prefix (the top when
// empty), relative to the top, and the folders in it that may be nested
// repositories. The tracked paths come first and fast, and are looked at
// while git is still walking the folders for untracked ones.
func (s *snapshotter) listRepo(ctx context.Context, prefix string) ([]visibleFile, []string, error) {
	g := gitx.Repo{Dir: filepath.Join(s.r.top, prefix), Env: s.r.git.Env}
	type listing struct {
		out string
		err error
	}
	others := make(chan listing, 1)
	go func() {
		out, err := g.Run(ctx, "ls-files", "-z", "--others", "--exclude-standard")
		others <- listing{out, err}
	}()
	cached, err := g.Run(ctx, "ls-files", "-z", "--cached")
	if err != nil {
		<-others
		return nil, nil, s.listError(prefix, err)
	}
	split := func(out string) (paths, dirs []string) {
		last := ""
		for _, p := range strings.Split(out, "\x00") {
			if p == "" || p == last { // unmerged paths come once per stage
				continue
			}
			last = p
			if prefix != "" {
				p = prefix + "/" + p
			}
			if strings.HasSuffix(p, "/") { // an untracked nested repository
				dirs = append(dirs, strings.TrimSuffix(p, "/"))
				continue
			}
			paths = append(paths, p)
		}
		return paths, dirs
	}
	paths, _ := split(cached)
	files, nested := s.statAll(paths)
	o := <-others
	if o.err != nil {
		return nil, nil, s.listError(prefix, o.err)
	}
	paths, dirs := split(o.out)
	more, moreDirs := s.statAll(paths)
	return append(files, more...), append(append(nested, dirs...), moreDirs...), nil
}

func (s *snapshotter) listError(prefix string, err error) error {
	if prefix == "" {
		return fmt.Errorf("list the work tree: %w", err)
	}
	return fmt.Errorf("list the files of the nested repository %q: %w", prefix, err)
}

// statAll lstats paths in parallel and returns the files and symlinks,
// and the paths that are folders.
func (s *snapshotter) statAll(paths []string) ([]visibleFile, []string) {
	type res struct {
		f   visibleFile
		dir bool
		ok  bool
	}
	results := make([]res, len(paths))
	// git will not look at a path below a symlink (it is not in the work
	// tree any more); lstat would follow the link. Each folder is checked
	// once.
	beyondLink := map[string]bool{}
	var linkedDir func(dir string) bool
	linkedDir = func(dir string) bool {
		if dir == "." || dir == "" {
			return false
		}
		if v, ok := beyondLink[dir]; ok {
			return v
		}
		v := linkedDir(filepath.Dir(dir))
		if !v {
			fi, err := os.Lstat(filepath.Join(s.r.top, dir))
			v = err == nil && fi.Mode()&os.ModeSymlink != 0
		}
		beyondLink[dir] = v
		return v
	}
	skip := make([]bool, len(paths))
	for i, p := range paths {
		skip[i] = linkedDir(filepath.Dir(p))
	}
	// ls-files lists paths sorted, so a folder's files come together:
	// each worker takes a run of whole folders and looks at their files
	// relative to the folder (fstatat), which spares the kernel a walk
	// of the whole path for each file.
	workers := 4
	chunk := (len(paths) + workers - 1) / workers
	var wg sync.WaitGroup
	for lo := 0; lo < len(paths); {
		hi := min(lo+chunk, len(paths))
		for hi < len(paths) && pathDir(paths[hi]) == pathDir(paths[hi-1]) {
			hi++
		}
		wg.Add(1)
		go func(lo, hi int) {
			defer wg.Done()
			dirFD, dirName := -1, "\x00"
			defer func() {
				if dirFD >= 0 {
					unix.Close(dirFD)
				}
			}()
			for i := lo; i < hi; i++ {
				if skip[i] {
					continue
				}
				dir, base := pathDir(paths[i]), paths[i][len(pathDir(paths[i])):]
				base = strings.TrimPrefix(base, "/")
				if dir != dirName {
					if dirFD >= 0 {
						unix.Close(dirFD)
					}
					dirName = dir
					var err error
					dirFD, err = unix.Open(s.r.top+"/"+dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
					if err != nil {
						dirFD = -1
					}
				}
				if dirFD < 0 {
					continue // the folder is gone, or is a file now
				}
				var st unix.Stat_t
				if err := unix.Fstatat(dirFD, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
					continue // deleted, or outside a sparse checkout
				}
				if st.Mode&unix.S_IFMT == unix.S_IFDIR {
					results[i] = res{dir: true}
					continue
				}
				if fs, ok := statOfSys(&st); ok {
					results[i] = res{f: visibleFile{path: paths[i], st: fs}, ok: true}
				}
			}
		}(lo, hi)
		lo = hi
	}
	wg.Wait()
	var files []visibleFile
	var dirs []string
	for i, r := range results {
		switch {
		case r.ok:
			files = append(files, r.f)
		case r.dir:
			dirs = append(dirs, paths[i])
		}
	}
	return files, dirs
}

// copyFile copies a file with its modification time, which git's check
// for racily clean entries compares file times against.
func copyFile(from, to string) error {
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		return err
	}
	tmp := to + ".tmp"
	dst, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return err
	}
	if err := dst.Close(); err != nil {
		return err
	}
	if err := os.Chtimes(tmp, st.ModTime(), st.ModTime()); err != nil {
		return err
	}
	return os.Rename(tmp, to)
}

// storeGCThreshold is how many loose objects (as storeObjects counts
// them) the private store may hold before gcStore rebuilds it.
var storeGCThreshold = 4000

// storeObjects counts the objects in the private store, roughly: the
// loose objects in one of the 256 fan-out folders, times 256, as git's
// gc --auto estimates.
func (s *snapshotter) storeObjects() int {
	ents, err := os.ReadDir(filepath.Join(s.shadow, "objects", "17"))
	if err != nil {
		return 0
	}
	return len(ents) * 256
}

// gcStore rebuilds the private store when it has grown: it keeps, in one
// pack, what the last synced tree needs that the user's HEAD does not
// have, and drops everything else (older snapshots' blobs and trees).
// The caller holds the sync lock, the only writer of the store.
func (s *snapshotter) gcStore(ctx context.Context, applied string) error {
	if s.storeObjects() < storeGCThreshold {
		return nil
	}
	g := s.git(s.indexPath())
	args := []string{"rev-list", "--objects", "--missing=allow-any", applied}
	if ok, _ := s.r.git.Ok(ctx, "rev-parse", "-q", "--verify", "HEAD^{tree}"); ok {
		args = append(args, "--not", "HEAD^{tree}")
	}
	list, err := g.Run(ctx, args...)
	if err != nil {
		return fmt.Errorf("list the snapshot objects: %w", err)
	}
	var ids strings.Builder
	for _, line := range strings.Split(list, "\n") {
		if id, _, _ := strings.Cut(line, " "); id != "" {
			ids.WriteString(id + "\n")
		}
	}
	objects := filepath.Join(s.shadow, "objects")
	oldPacks, _ := filepath.Glob(filepath.Join(objects, "pack", "pack-*"))
	name, err := g.RunInput(ctx, strings.NewReader(ids.String()), "pack-objects", "-q", filepath.Join(objects, "pack", "pack"))
	if err != nil {
		return fmt.Errorf("pack the snapshot objects: %w", err)
	}
	for _, p := range oldPacks {
		if !strings.Contains(filepath.Base(p), name) {
			_ = os.Remove(p)
		}
	}
	for i := 0; i < 256; i++ {
		_ = os.RemoveAll(filepath.Join(objects, fmt.Sprintf("%02x", i)))
	}
	s.logf("compacted the snapshot store to the %d objects the last sync needs", strings.Count(ids.String(), "\n"))
	return nil
}

// appliedRecord is what this worktree last synced: the tree and the big
// blobs in it, which the workspace then holds and a delta may build on.
type appliedRecord struct {
	Tree string   `json:"tree"`
	Big  []string `json:"big,omitempty"`
}

func (s *snapshotter) loadApplied() appliedRecord {
	var rec appliedRecord
	if b, err := os.ReadFile(filepath.Join(s.dir, "applied.json")); err == nil {
		_ = json.Unmarshal(b, &rec)
	}
	return rec
}

func (s *snapshotter) saveApplied(tree string, big map[string]bool) error {
	rec := appliedRecord{Tree: tree}
	for id := range big {
		rec.Big = append(rec.Big, id)
	}
	sort.Strings(rec.Big)
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	p := filepath.Join(s.dir, "applied.json")
	if err := os.WriteFile(p+".tmp", b, 0o644); err != nil {
		return fmt.Errorf("record the synced tree: %w", err)
	}
	return os.Rename(p+".tmp", p)
}

// bigBlobsIn lists the big blobs of a committed tree (the baseline's),
// which the workspace holds once it has the commit.
func (s *snapshotter) bigBlobsIn(ctx context.Context, tree string) map[string]bool {
	m := map[string]bool{}
	out, err := s.r.git.Run(ctx, "ls-tree", "-r", "-l", "-z", tree)
	if err != nil {
		return m
	}
	for _, rec := range strings.Split(out, "\x00") {
		meta, _, _ := strings.Cut(rec, "\t")
		f := strings.Fields(meta)
		if len(f) != 4 || f[1] != "blob" {
			continue
		}
		if n, err := strconv.ParseInt(f[3], 10, 64); err == nil && n >= bigFileSize {
			m[f[2]] = true
		}
	}
	return m
}

// pathDir is the folder part of a slash-separated path, "" at the top.
func pathDir(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[:i]
	}
	return ""
}
