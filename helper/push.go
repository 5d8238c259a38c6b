package helper

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
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
	if ok, _ := h.git.Ok(ctx, "check-ref-format", u.Ref); !ok {
		refuse(quote("invalid ref name"))
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
	if ok, _ := h.git.Ok(ctx, "cat-file", "-e", old); !ok {
		h.outOfSync(u.Ref, fmt.Sprintf("upstream %s is at %s, which this repository does not have", short(u.Ref), old[:12]))
		refuse("fetch first")
		return
	}
	if strings.HasPrefix(u.Ref, "refs/tags/") {
		if !u.Force {
			refuse("already exists")
			return
		}
	} else if ok, _ := h.git.Ok(ctx, "merge-base", "--is-ancestor", old, u.New); !ok {
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

	bundlePath, err := h.makeBundle(ctx, ups, tmpDir)
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
	var p *payload.Payload
	if bundlePath != "" {
		if p, err = payload.Prepare(bundlePath, tmpDir); err != nil {
			return fmt.Errorf("prepare bundle: %w", err)
		}
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
		return fmt.Errorf("the relay could not push to upstream: %s", st.Message)
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

// makeBundle writes a bundle of what upstream lacks, or returns "" when
// upstream already has every object (a ref-only update).
func (h *Helper) makeBundle(ctx context.Context, ups []*refUpdate, dir string) (string, error) {
	var news []string
	for _, u := range ups {
		if u.New != zeroID {
			news = append(news, u.New)
		}
	}
	if len(news) == 0 {
		return "", nil
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
			return "", err
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
		return "", fmt.Errorf("find what upstream lacks: %w", err)
	}
	if strings.TrimSpace(missing) == "" {
		return "", nil
	}
	// Bundle from temporary refs: git records HEAD or a raw id badly in a
	// bundle's ref list, or refuses it.
	tmpPrefix := "refs/relay-tmp/" + randomHex(8) + "/"
	var revs strings.Builder
	var del strings.Builder
	for i, n := range news {
		ref := tmpPrefix + strconv.Itoa(i)
		if _, err := h.git.Run(ctx, "update-ref", "--no-deref", ref, n); err != nil {
			return "", err
		}
		revs.WriteString(ref + "\n")
		del.WriteString("delete " + ref + "\n")
	}
	defer h.git.RunInput(context.Background(), strings.NewReader(del.String()), "update-ref", "--stdin")
	for _, p := range prereqs {
		revs.WriteString(p + "\n")
	}
	path := dir + "/push.bundle"
	start := time.Now()
	h.ui.status("bundling %d ref(s)...", len(news))
	c := h.git.Command(ctx, "bundle", "create", "-q", path, "--stdin")
	c.Stdin = strings.NewReader(revs.String())
	if err := c.Run(); err != nil {
		return "", fmt.Errorf("create bundle: %w", err)
	}
	if st, err := os.Stat(path); err == nil {
		h.ui.done("bundled %d ref(s): %s in %s", len(news), humanBytes(st.Size()), time.Since(start).Round(time.Millisecond))
	}
	return path, nil
}

// upload seals the payload chunk by chunk and sends each one; memory stays
// at about two chunks. A chunk upload that fails on the way is sent again;
// the server takes the same bytes at the same index as success, so a retry
// after a lost answer resumes where the upload stopped.
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
	start := time.Now()
	var sent int64
	q := func(i uint32) url.Values {
		return url.Values{"session": {session}, "index": {strconv.FormatUint(uint64(i), 10)}}
	}
	err = st.SealAll(f, m.ChunkSize, func(i uint32, sealed []byte) error {
		if _, err := h.client.Do(ctx, http.MethodPut, wire.PathPushChunk, q(i), sealed, nil); err != nil {
			return fmt.Errorf("upload chunk %d of %d: %w", i+1, m.Chunks, h.explain(err))
		}
		sent += int64(len(sealed))
		h.ui.status("upload %d/%d chunks, %s, %s", i+1, m.Chunks, humanBytes(sent), rate(sent, time.Since(start)))
		return nil
	})
	if err != nil {
		return err
	}
	h.ui.done("upload %d/%d chunks, %s, %s, done.", m.Chunks, m.Chunks, humanBytes(sent), rate(sent, time.Since(start)))
	return nil
}

// finish asks the server to apply the push and follows its phases until
// it is done or failed.
func (h *Helper) finish(ctx context.Context, session string) (*wire.PushStatus, error) {
	q := url.Values{"session": {session}}
	var st wire.PushStatus
	if _, err := h.client.Do(ctx, http.MethodPost, wire.PathPushFinish, q, nil, &st); err != nil {
		return nil, h.explain(err)
	}
	last := ""
	delay := 50 * time.Millisecond
	for st.Phase != wire.PhaseDone && st.Phase != wire.PhaseFailed {
		if st.Phase != last {
			h.ui.status("server: %s...", st.Phase)
			last = st.Phase
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(delay):
		}
		if delay < time.Second {
			delay = delay * 3 / 2
		}
		if _, err := h.client.Do(ctx, http.MethodGet, wire.PathPushStatus, q, nil, &st); err != nil {
			return nil, h.explain(err)
		}
	}
	h.ui.done("server: %s.", st.Phase)
	return &st, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
