package helper

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/git-relay/git-relay/internal/keyring"
	"github.com/git-relay/git-relay/internal/payload"
	"github.com/git-relay/git-relay/internal/seal"
	"github.com/git-relay/git-relay/internal/wire"
)

const zeroID = "0000000000000000000000000000000000000000"

// refUpdate is one push line, checked.
type refUpdate struct {
	wire.Update
	src    string
	result string // the line for git, once known
}

// push handles one batch of push lines and returns the status lines.
func (h *Helper) push(ctx context.Context, specs []string) ([]string, error) {
	if h.refs == nil {
		if _, err := h.list(ctx); err != nil {
			return nil, err
		}
	}
	var ups []*refUpdate
	for _, spec := range specs {
		force := strings.HasPrefix(spec, "+")
		src, dst, ok := strings.Cut(strings.TrimPrefix(spec, "+"), ":")
		if !ok {
			return nil, fmt.Errorf("bad push line %q from git", spec)
		}
		u := &refUpdate{src: src, Update: wire.Update{Ref: dst, Force: force}}
		h.check(ctx, u)
		ups = append(ups, u)
	}

	var todo []*refUpdate
	failed := false
	for _, u := range ups {
		if u.result == "" {
			todo = append(todo, u)
		} else if strings.HasPrefix(u.result, "error ") {
			failed = true
		}
	}
	if h.atomic && failed {
		for _, u := range todo {
			u.result = "error " + u.Ref + " atomic push failed"
		}
		todo = nil
	}
	if len(todo) > 0 {
		if err := h.send(ctx, todo); err != nil {
			return nil, err
		}
	}
	out := make([]string, len(ups))
	for i, u := range ups {
		out[i] = u.result
	}
	return out, nil
}

// check validates one update against upstream's refs and the local
// repository. git does not check for a helper that the upstream tip is in
// the local repository, so this is where divergence is refused, before
// anything is uploaded.
func (h *Helper) check(ctx context.Context, u *refUpdate) {
	refuse := func(why string) { u.result = "error " + u.Ref + " " + why }
	if !strings.HasPrefix(u.Ref, "refs/heads/") && !strings.HasPrefix(u.Ref, "refs/tags/") {
		refuse(quote("the relay pushes only branches (refs/heads/*) and tags (refs/tags/*)"))
		return
	}
	old := h.refs.Refs[u.Ref]
	if old == "" {
		old = zeroID
	}
	u.Old = old
	if want, leased := h.cas[u.Ref]; leased {
		if want == "" {
			want = zeroID
		}
		if want != old {
			refuse("stale info")
			return
		}
		// A lease that holds allows a forced update; git does not always
		// mark such a push line with '+'.
		u.Force = true
	}
	if u.src == "" {
		u.New = zeroID
		switch {
		case old == zeroID:
			refuse(quote("remote ref does not exist"))
		case u.Ref == h.refs.Head:
			refuse(quote("refusing to delete the default branch " + u.Ref))
		}
		return
	}
	newID, err := h.git.Run(ctx, "rev-parse", "--verify", "--quiet", u.src)
	if err != nil || newID == "" {
		refuse(quote("src refspec " + u.src + " does not match any object"))
		return
	}
	u.New = newID
	if old == u.New {
		u.result = "ok " + u.Ref + " up to date"
		return
	}
	if old == zeroID {
		return
	}
	if strings.HasPrefix(u.Ref, "refs/tags/") {
		if ok, _ := h.git.Ok(ctx, "cat-file", "-e", old); !ok {
			h.outOfSync(u.Ref, fmt.Sprintf("upstream tag %s is at %s, which this repository does not have", short(u.Ref), old[:12]))
			refuse("fetch first")
			return
		}
		if !u.Force {
			refuse("already exists")
			return
		}
	} else if ff, err := h.git.Ok(ctx, "merge-base", "--is-ancestor", old, u.New); err != nil || !ff {
		if ok, _ := h.git.Ok(ctx, "cat-file", "-e", old); !ok {
			h.outOfSync(u.Ref, fmt.Sprintf("upstream %s is at %s, which this repository does not have", short(u.Ref), old[:12]))
			refuse("fetch first")
			return
		}
		if !u.Force {
			h.outOfSync(u.Ref, fmt.Sprintf("upstream %s is at %s, which %s does not contain", short(u.Ref), old[:12], u.src))
			refuse("non-fast forward")
			return
		}
	} else {
		// A fast-forward needs no force, whatever the push line says.
		u.Force = false
	}
	if u.Force && !h.refs.AllowForce {
		refuse(quote("forced updates are refused by the relay (the server runs without --allow-force)"))
	}
}

func (h *Helper) outOfSync(ref, why string) {
	branch := short(ref)
	h.ui.warn("relay: ERR_OUT_OF_SYNC: %s. Your branch has diverged from the external repository or is behind it; pull from it first: git pull relay::%s %s", why, h.repo, branch)
}

func short(ref string) string {
	return strings.TrimPrefix(strings.TrimPrefix(ref, "refs/heads/"), "refs/tags/")
}

func quote(s string) string { return strconv.Quote(s) }

// send bundles what upstream lacks for the updates, uploads it and reports
// what upstream did with each ref.
func (h *Helper) send(ctx context.Context, ups []*refUpdate) error {
	tmpDir, err := os.MkdirTemp(h.git.GitDir, "relay-push-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmpDir)

	p, err := h.makeBundle(ctx, ups, tmpDir)
	if err != nil {
		return err
	}
	m := wire.PushManifest{
		Version: 1, Repo: h.repo, Atomic: h.atomic, Options: h.pushOptions,
		Salt: randomHex(32), Nonce: randomHex(16), Compression: wire.CompressNone,
	}
	for _, u := range ups {
		m.Updates = append(m.Updates, u.Update)
	}
	if p != nil {
		defer p.Close()
		m.Compression, m.BundleSize, m.BundleHash, m.PayloadSize = p.Compression, p.BundleSize, p.BundleHash, p.PayloadSize
		m.ChunkSize = payload.ChunkSize(h.maxBdy)
		m.Chunks = seal.Chunks(p.PayloadSize, m.ChunkSize)
		h.ui.detail("bundle: %s, payload %s (%s), %d chunk(s)", humanBytes(p.BundleSize), humanBytes(p.PayloadSize), p.Compression, m.Chunks)
	} else {
		h.ui.detail("upstream has every object: updating refs only")
	}
	if h.dryRun {
		for _, u := range ups {
			u.result = "ok " + u.Ref
		}
		return nil
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return err
	}
	var sess wire.Session
	if _, err := h.client.Do(ctx, http.MethodPost, wire.PathPush, nil, raw, &sess); err != nil {
		var api *wire.APIError
		if errors.As(err, &api) && (api.Code == wire.CodeForbidden || api.Code == wire.CodeTooLarge) {
			for _, u := range ups {
				u.result = "error " + u.Ref + " " + quote(api.Msg)
			}
			return nil
		}
		return h.explain(err)
	}
	if m.Chunks > 0 {
		if err := h.upload(ctx, sess.Session, m, raw, p.Path); err != nil {
			return err
		}
	}
	st, err := h.finish(ctx, sess.Session)
	if err != nil {
		return err
	}
	if st.Phase == wire.PhaseFailed {
		// Nothing landed; git prints the reason next to each ref.
		for _, u := range ups {
			u.result = "error " + u.Ref + " " + quote("the relay refused the push: "+st.Message)
		}
		return nil
	}
	byRef := map[string]wire.RefResult{}
	for _, r := range st.Results {
		byRef[r.Ref] = r
	}
	for _, u := range ups {
		r, ok := byRef[u.Ref]
		switch {
		case !ok:
			u.result = "error " + u.Ref + " " + quote("the relay reported nothing for this ref")
		case r.OK && u.Force:
			u.result = "ok " + u.Ref + " forced update"
		case r.OK:
			u.result = "ok " + u.Ref
		case r.Reason == "fetch first":
			h.outOfSync(u.Ref, "upstream "+short(u.Ref)+" moved while this push was on its way")
			u.result = "error " + u.Ref + " fetch first"
		case r.Reason == "non-fast forward" || r.Reason == "already exists" || r.Reason == "stale info":
			u.result = "error " + u.Ref + " " + r.Reason
		default:
			u.result = "error " + u.Ref + " " + quote(r.Reason)
		}
	}
	return nil
}

// makeBundle writes a bundle of what upstream lacks and prepares it for
// sealing, or returns nil when upstream already has every object (a
// ref-only update).
func (h *Helper) makeBundle(ctx context.Context, ups []*refUpdate, dir string) (*payload.Payload, error) {
	var news []string
	for _, u := range ups {
		if u.New != zeroID {
			news = append(news, u.New)
		}
	}
	if len(news) == 0 {
		return nil, nil
	}
	// Prerequisites: every upstream tip the local repository has, so that
	// the bundle carries only what upstream lacks.
	upstreamIDs := map[string]bool{}
	var ids []string
	for _, id := range h.refs.Refs {
		if !upstreamIDs[id] {
			upstreamIDs[id] = true
			ids = append(ids, id)
		}
	}
	var prereqs []string
	if len(ids) > 0 {
		out, err := h.git.RunInput(ctx, strings.NewReader(strings.Join(ids, "\n")+"\n"), "cat-file", "--batch-check=%(objectname)")
		if err != nil {
			return nil, err
		}
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) == 1 && upstreamIDs[f[0]] {
				prereqs = append(prereqs, "^"+f[0])
			}
		}
	}
	var check strings.Builder
	for _, n := range news {
		check.WriteString(n + "\n")
	}
	for _, p := range prereqs {
		check.WriteString(p + "\n")
	}
	missing, err := h.git.RunInput(ctx, strings.NewReader(check.String()), "rev-list", "--objects", "-n", "1", "--stdin")
	if err != nil {
		return nil, fmt.Errorf("find what upstream lacks: %w", err)
	}
	if strings.TrimSpace(missing) == "" {
		return nil, nil
	}
	// Bundle from refs: git records HEAD or a raw id badly in a bundle's
	// ref list, or refuses it. A source that is a full ref name is used as
	// it is; anything else gets a temporary ref.
	var revs strings.Builder
	var del strings.Builder
	seenRef := map[string]bool{}
	for i, u := range ups {
		if u.New == zeroID || upstreamIDs[u.New] {
			// Deleted, or upstream has it already (a new branch at one of
			// its tips): the server checks such ids against upstream.
			continue
		}
		ref := u.src
		if !strings.HasPrefix(ref, "refs/") || ref == "HEAD" {
			ref = "refs/relay-tmp/" + randomHex(8) + "/" + strconv.Itoa(i)
			if _, err := h.git.Run(ctx, "update-ref", "--no-deref", ref, u.New); err != nil {
				return nil, err
			}
			del.WriteString("delete " + ref + "\n")
		}
		if !seenRef[ref] {
			seenRef[ref] = true
			revs.WriteString(ref + "\n")
		}
	}
	if del.Len() > 0 {
		defer h.git.RunInput(context.Background(), strings.NewReader(del.String()), "update-ref", "--stdin")
	}
	for _, p := range prereqs {
		revs.WriteString(p + "\n")
	}
	start := time.Now()
	h.ui.status("bundling %d ref(s)...", len(news))
	c := h.git.Command(ctx, "bundle", "create", "-q", "-", "--stdin")
	c.Stdin = strings.NewReader(revs.String())
	out, err := c.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := c.Start(); err != nil {
		return nil, err
	}
	p, perr := payload.Spool(out, filepath.Join(dir, "push.bundle"), dir)
	if perr != nil {
		io.Copy(io.Discard, out)
	}
	if err := c.Wait(); err != nil {
		if p != nil {
			p.Close()
		}
		return nil, fmt.Errorf("create bundle: %w", err)
	}
	if perr != nil {
		return nil, fmt.Errorf("prepare bundle: %w", perr)
	}
	h.ui.done("bundled %d ref(s): %s in %s", len(news), humanBytes(p.BundleSize), time.Since(start).Round(time.Millisecond))
	return p, nil
}

// upload seals the payload chunk by chunk and sends the chunks, a few at a
// time; memory stays at a few chunks whatever the payload's size. A chunk
// upload that fails on the way is sent again; the server takes the same
// bytes at the same index as success, so a retry after a lost answer
// resumes where the upload stopped.
func (h *Helper) upload(ctx context.Context, session string, m wire.PushManifest, raw []byte, path string) error {
	salt, _ := hex.DecodeString(m.Salt)
	st, err := seal.New(h.client.Key, keyring.LabelPushPayload, salt, wire.ManifestHash(raw), m.Chunks)
	if err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || fi.Size() != m.PayloadSize {
		return fmt.Errorf("payload changed size while uploading")
	}
	plains := make([][]byte, chunkWorkers)
	sealed := make([][]byte, chunkWorkers)
	return h.eachChunk(ctx, "upload", m.Chunks, func(ctx context.Context, w int, i uint32) (int64, error) {
		off := int64(i) * int64(m.ChunkSize)
		n := min(int64(m.ChunkSize), m.PayloadSize-off)
		if plains[w] == nil {
			plains[w] = make([]byte, m.ChunkSize)
		}
		if _, err := f.ReadAt(plains[w][:n], off); err != nil {
			return 0, fmt.Errorf("read payload: %w", err)
		}
		var err error
		if sealed[w], err = st.Seal(sealed[w][:0], i, plains[w][:n]); err != nil {
			return 0, err
		}
		q := url.Values{"session": {session}, "index": {strconv.FormatUint(uint64(i), 10)}}
		if _, err := h.client.Do(ctx, http.MethodPut, wire.PathPushChunk, q, sealed[w], nil); err != nil {
			return 0, fmt.Errorf("upload chunk %d of %d: %w", i+1, m.Chunks, h.explain(err))
		}
		return int64(len(sealed[w])), nil
	})
}

// finish asks the server to apply the push and follows its phases until
// it is done or failed. The server holds each answer until the push is
// done (or a few seconds pass), so a small push takes one round trip.
func (h *Helper) finish(ctx context.Context, session string) (*wire.PushStatus, error) {
	q := url.Values{"session": {session}}
	var st wire.PushStatus
	if _, err := h.client.Do(ctx, http.MethodPost, wire.PathPushFinish, q, nil, &st); err != nil {
		return nil, h.explain(err)
	}
	wait := url.Values{"session": {session}, "wait": {"1"}}
	for st.Phase != wire.PhaseDone && st.Phase != wire.PhaseFailed {
		h.ui.status("server: %s...", st.Phase)
		if _, err := h.client.Do(ctx, http.MethodGet, wire.PathPushStatus, wait, nil, &st); err != nil {
			return nil, h.explain(err)
		}
	}
	h.ui.done("server: %s.", timeline(st.Timeline))
	return &st, nil
}

// timeline says how long the server spent in each phase.
func timeline(ts []wire.PhaseTime) string {
	var parts []string
	for i, t := range ts {
		if t.Phase == wire.PhaseReceiving {
			continue
		}
		if i+1 < len(ts) {
			parts = append(parts, fmt.Sprintf("%s %s", t.Phase, ts[i+1].At.Sub(t.At).Round(time.Millisecond)))
		} else {
			parts = append(parts, t.Phase)
		}
	}
	return strings.Join(parts, ", ")
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
