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
	"strconv"
	"strings"
	"time"

	"github.com/git-relay/git-relay/internal/gitx"
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

// send bundles what upstream lacks for the updates, uploads it while git
// writes it, and reports what upstream did with each ref.
func (h *Helper) send(ctx context.Context, ups []*refUpdate) error {
	revs, cleanup, err := h.bundleRevs(ctx, ups)
	if err != nil {
		return err
	}
	defer cleanup()
	m := wire.PushManifest{
		Version: wire.PushManifestVersion, Repo: h.repo, Atomic: h.atomic, Options: h.pushOptions,
		Salt: randomHex(32), Nonce: randomHex(16),
	}
	for _, u := range ups {
		m.Updates = append(m.Updates, u.Update)
	}
	var bundle *bundleRun
	if revs != "" {
		m.ChunkSize = payload.ChunkSize(h.maxBdy)
		// git spends its first moments counting objects; the session is
		// opened meanwhile.
		if bundle, err = h.startBundle(ctx, revs); err != nil {
			return err
		}
		defer bundle.stop()
	} else {
		h.ui.detail("upstream has every object: updating refs only")
	}
	if h.dryRun {
		if bundle != nil {
			if _, err := bundle.drain(m.ChunkSize); err != nil {
				return err
			}
		}
		for _, u := range ups {
			u.result = "ok " + u.Ref
		}
		return nil
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return err
	}
	refuse := func(err error) bool {
		var api *wire.APIError
		if errors.As(err, &api) && (api.Code == wire.CodeForbidden || api.Code == wire.CodeTooLarge) {
			for _, u := range ups {
				u.result = "error " + u.Ref + " " + quote(api.Msg)
			}
			return true
		}
		return false
	}
	var sess wire.Session
	if _, err := h.client.Do(ctx, http.MethodPost, wire.PathPush, nil, raw, &sess); err != nil {
		if refuse(err) {
			return nil
		}
		return h.explain(err)
	}
	totals := wire.Totals{}
	if bundle != nil {
		t, err := h.upload(ctx, sess.Session, m, raw, bundle)
		if err != nil {
			if refuse(err) {
				return nil
			}
			return err
		}
		totals = *t
	}
	st, err := h.finish(ctx, sess.Session, totals)
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

// bundleRevs returns what `git bundle create --stdin` must be given to
// bundle what upstream lacks for the updates, or "" when upstream already
// has every object (a ref-only update). cleanup removes the temporary
// refs it made.
func (h *Helper) bundleRevs(ctx context.Context, ups []*refUpdate) (string, func(), error) {
	nothing := func() {}
	var news []string
	for _, u := range ups {
		if u.New != zeroID {
			news = append(news, u.New)
		}
	}
	if len(news) == 0 {
		return "", nothing, nil
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
			return "", nothing, err
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
		return "", nothing, fmt.Errorf("find what upstream lacks: %w", err)
	}
	if strings.TrimSpace(missing) == "" {
		return "", nothing, nil
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
				return "", nothing, err
			}
			del.WriteString("delete " + ref + "\n")
		}
		if !seenRef[ref] {
			seenRef[ref] = true
			revs.WriteString(ref + "\n")
		}
	}
	cleanup := nothing
	if del.Len() > 0 {
		cleanup = func() {
			_, _ = h.git.RunInput(context.Background(), strings.NewReader(del.String()), "update-ref", "--stdin")
		}
	}
	for _, p := range prereqs {
		revs.WriteString(p + "\n")
	}
	return revs.String(), cleanup, nil
}

// bundleRun is `git bundle create` writing to a pipe.
type bundleRun struct {
	h     *Helper
	cmd   *gitx.Cmd
	out   io.ReadCloser
	start time.Time
	done  bool
}

func (h *Helper) startBundle(ctx context.Context, revs string) (*bundleRun, error) {
	h.ui.status("bundling...")
	c := h.git.Command(ctx, "bundle", "create", "-q", "-", "--stdin")
	c.Stdin = strings.NewReader(revs)
	out, err := c.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := c.Start(); err != nil {
		return nil, fmt.Errorf("create bundle: %w", err)
	}
	return &bundleRun{h: h, cmd: c, out: out, start: time.Now()}, nil
}

// split cuts the bundle into chunks as git writes it (see payload.Split)
// and waits for git.
func (b *bundleRun) split(chunkSize int, free chan []byte, emit func(i uint32, final bool, chunk []byte) error) (*wire.Totals, error) {
	t, err := payload.Split(b.out, chunkSize, free, nil, emit)
	if err != nil {
		b.stop()
		if werr := b.wait(); werr != nil && !errors.Is(err, context.Canceled) {
			return nil, werr
		}
		return nil, err
	}
	if err := b.wait(); err != nil {
		return nil, err
	}
	b.h.ui.detail("bundle: %s, payload %s (%s), %d chunk(s), written in %s", humanBytes(t.BundleSize), humanBytes(t.PayloadSize), t.Compression, t.Chunks, time.Since(b.start).Round(time.Millisecond))
	return t, nil
}

// drain reads the whole bundle and throws it away: a dry run makes the
// bundle, to show that it can, and sends nothing.
func (b *bundleRun) drain(chunkSize int) (*wire.Totals, error) {
	free := make(chan []byte, 1)
	free <- make([]byte, chunkSize)
	return b.split(chunkSize, free, func(_ uint32, _ bool, buf []byte) error {
		free <- buf
		return nil
	})
}

func (b *bundleRun) wait() error {
	if b.done {
		return nil
	}
	b.done = true
	if err := b.cmd.Wait(); err != nil {
		return fmt.Errorf("create bundle: %w", err)
	}
	return nil
}

// stop ends git early (a failed upload) and reaps it.
func (b *bundleRun) stop() {
	if !b.done {
		b.out.Close()
		_ = b.wait()
	}
}

// upload seals and sends the bundle's chunks while git writes it, a few
// at a time; memory stays at a few chunks whatever the payload's size. A
// chunk upload that fails on the way is sent again; the server takes the
// same bytes at the same index as success, so a retry after a lost answer
// resumes where the upload stopped.
func (h *Helper) upload(ctx context.Context, session string, m wire.PushManifest, raw []byte, b *bundleRun) (*wire.Totals, error) {
	salt, _ := hex.DecodeString(m.Salt)
	st, err := seal.New(h.client.Key, keyring.LabelPushPayload, salt, wire.ManifestHash(raw))
	if err != nil {
		return nil, err
	}
	// One buffer per worker and one being filled: each chunk is sealed in
	// place and given back once the server has it.
	free := make(chan []byte, chunkWorkers+1)
	for range chunkWorkers + 1 {
		free <- make([]byte, 0, m.ChunkSize+seal.Overhead)
	}
	var totals *wire.Totals
	feed := func(ctx context.Context, send func(chunk) error) error {
		var err error
		totals, err = b.split(m.ChunkSize, free, func(i uint32, final bool, buf []byte) error {
			return send(chunk{i: i, final: final, buf: buf})
		})
		return err
	}
	err = h.moveChunks(ctx, "upload", 0, feed, func(ctx context.Context, _ int, c chunk) (int64, error) {
		defer func() { free <- c.buf[:0] }()
		sealed := st.Seal(c.buf[:0], c.i, c.final, c.buf)
		q := url.Values{"session": {session}, "index": {strconv.FormatUint(uint64(c.i), 10)}}
		if c.final {
			q.Set("final", "1")
		}
		if _, err := h.client.Do(ctx, http.MethodPut, wire.PathPushChunk, q, sealed, nil); err != nil {
			return 0, fmt.Errorf("upload chunk %d: %w", c.i+1, h.explain(err))
		}
		return int64(len(sealed)), nil
	})
	if err != nil {
		return nil, err
	}
	return totals, nil
}

// finish asks the server to apply the push and follows its phases until
// it is done or failed. The server holds each answer until the push is
// done (or a few seconds pass), so a small push takes one round trip.
func (h *Helper) finish(ctx context.Context, session string, totals wire.Totals) (*wire.PushStatus, error) {
	q := url.Values{"session": {session}}
	body, err := json.Marshal(totals)
	if err != nil {
		return nil, err
	}
	var st wire.PushStatus
	if _, err := h.client.Do(ctx, http.MethodPost, wire.PathPushFinish, q, body, &st); err != nil {
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
