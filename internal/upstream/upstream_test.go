package upstream

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/go-git/go-git/v5/plumbing/format/pktline"
	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/bundle"
	"github.com/git-relay/git-relay/internal/githost"
	"github.com/git-relay/git-relay/internal/gittest"
	"github.com/git-relay/git-relay/internal/gitx"
)

const testToken = "ghp_Upstream+Tok/en=42"

// TestMain makes every git command of the package and of the tests
// hermetic: a private HOME, no system config, no prompts, fixed names and
// dates.
func TestMain(m *testing.M) { gittest.Main(m) }

// world is a local work repository and a folder of bare upstream
// repositories, reached through one transport.
type world struct {
	root  string    // upstream repositories: root/owner/<name>.git
	work  gitx.Repo // a work tree with history
	host  *githost.Host
	token string
	// plainURL, when set, is an http host without githost's watching.
	plainURL string
}

func (w *world) url(name string) string {
	if w.plainURL != "" {
		return w.plainURL + "/owner/" + name + ".git"
	}
	if w.host != nil {
		return w.host.URL + "/owner/" + name + ".git"
	}
	return "file://" + filepath.Join(w.root, "owner", name+".git")
}

func (w *world) remote(t *testing.T, name string) *Remote {
	t.Helper()
	r, err := New(w.url(name), w.token)
	require.NoError(t, err)
	return r
}

// newBare creates an empty upstream repository.
func (w *world) newBare(t *testing.T, name string) gitx.Repo {
	t.Helper()
	dir := filepath.Join(w.root, "owner", name+".git")
	gittest.Run(t, gitx.Repo{}, "init", "-q", "--bare", "-b", "master", dir)
	return gitx.Repo{GitDir: dir}
}

func (w *world) commit(t *testing.T, msg string) string {
	t.Helper()
	name := strings.ReplaceAll(msg, " ", "-") + ".txt"
	require.NoError(t, os.WriteFile(filepath.Join(w.work.Dir, name), []byte(strings.Repeat(msg+"\n", 100)), 0o644))
	gittest.Run(t, w.work, "add", name)
	gittest.Run(t, w.work, "commit", "-q", "-m", msg)
	return gittest.Run(t, w.work, "rev-parse", "HEAD")
}

// seed pushes local ref src to upstream name with plain git.
func (w *world) seed(t *testing.T, name, refspec string) {
	t.Helper()
	gittest.Run(t, w.work, "push", "-q", filepath.Join(w.root, "owner", name+".git"), refspec)
}

// bundle writes a bundle of revs and returns its pack.
func (w *world) bundle(t *testing.T, revs ...string) (*bundle.Header, io.ReadCloser) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "b.bundle")
	gittest.Run(t, w.work, append([]string{"bundle", "create", "-q", path}, revs...)...)
	h, pack, err := bundle.OpenPack(path)
	require.NoError(t, err)
	t.Cleanup(func() { pack.Close() })
	return h, pack
}

func newWorld(t *testing.T, transport string) *world {
	t.Helper()
	w := &world{root: t.TempDir()}
	require.NoError(t, os.MkdirAll(filepath.Join(w.root, "owner"), 0o755))
	dir := t.TempDir()
	w.work = gitx.Repo{Dir: dir}
	gittest.Run(t, w.work, "init", "-q", "-b", "master")
	if transport == "http" {
		h, err := githost.Start(w.root, testToken)
		require.NoError(t, err)
		t.Cleanup(func() {
			_ = h.Close()
			require.Empty(t, h.Leaks(), "the token showed up in a command line")
		})
		w.host = h
		w.token = testToken
	}
	return w
}

// eachTransport runs f against a file:// upstream and an http:// one.
func eachTransport(t *testing.T, f func(t *testing.T, w *world)) {
	for _, tr := range []string{"file", "http"} {
		t.Run(tr, func(t *testing.T) { f(t, newWorld(t, tr)) })
	}
}

func TestList(t *testing.T) {
	eachTransport(t, func(t *testing.T, w *world) {
		up := w.newBare(t, "repo")
		c1 := w.commit(t, "one")
		c2 := w.commit(t, "two")
		gittest.Run(t, w.work, "tag", "-a", "-m", "release", "v1", c1)
		gittest.Run(t, w.work, "tag", "light", c2)
		gittest.Run(t, w.work, "branch", "side", c1)
		w.seed(t, "repo", "refs/heads/*:refs/heads/*")
		w.seed(t, "repo", "refs/tags/*:refs/tags/*")
		gittest.Run(t, up, "update-ref", "refs/pull/1/head", c1) // not a branch or tag: not listed
		gittest.Run(t, up, "symbolic-ref", "HEAD", "refs/heads/side")

		refs, err := w.remote(t, "repo").List(t.Context())
		require.NoError(t, err)
		require.Equal(t, "refs/heads/side", refs.Head)
		require.Equal(t, map[string]string{
			"refs/heads/master": c2,
			"refs/heads/side":   c1,
			"refs/tags/v1":      gittest.Run(t, up, "rev-parse", "refs/tags/v1"),
			"refs/tags/light":   c2,
		}, refs.Refs)
		require.Equal(t, map[string]string{"refs/tags/v1": c1}, refs.Peeled)

		w.newBare(t, "empty")
		refs, err = w.remote(t, "empty").List(t.Context())
		require.NoError(t, err)
		require.Equal(t, &Refs{Refs: map[string]string{}, Peeled: map[string]string{}}, refs)
	})
}

// The relay's main path: the pack of a thin bundle whose prerequisite is
// upstream's tip goes to upstream as is.
func TestPushThinBundle(t *testing.T) {
	eachTransport(t, func(t *testing.T, w *world) {
		up := w.newBare(t, "repo")
		w.commit(t, "one")
		base := w.commit(t, "two")
		w.seed(t, "repo", "master")
		w.commit(t, "three")
		tip := w.commit(t, "four")

		h, pack := w.bundle(t, "master", "^"+base)
		require.Equal(t, base, h.Prereqs[0].OID)
		var progress bytes.Buffer
		res, err := w.remote(t, "repo").Push(t.Context(), PushRequest{
			Updates:  []Update{{Ref: "refs/heads/master", Old: base, New: tip}},
			Pack:     pack,
			Progress: &progress,
		})
		require.NoError(t, err)
		require.Equal(t, &PushResult{Refs: map[string]string{"refs/heads/master": ""}}, res)
		require.True(t, res.OK())
		require.Equal(t, tip, gittest.Run(t, up, "rev-parse", "refs/heads/master"))
		gittest.Run(t, up, "fsck", "--strict", "--no-dangling")
		require.Equal(t, gittest.Run(t, w.work, "rev-list", "master"), gittest.Run(t, up, "rev-list", "master"))
	})
}

func TestPushCreateAndDelete(t *testing.T) {
	eachTransport(t, func(t *testing.T, w *world) {
		up := w.newBare(t, "repo")
		c1 := w.commit(t, "one")
		w.seed(t, "repo", "master")
		r := w.remote(t, "repo")

		// A new branch and a lightweight tag at a commit upstream has:
		// no objects to send, so an empty pack goes.
		res, err := r.Push(t.Context(), PushRequest{Updates: []Update{
			{Ref: "refs/heads/feature", Old: ZeroID, New: c1},
			{Ref: "refs/tags/t1", Old: ZeroID, New: c1},
		}})
		require.NoError(t, err)
		require.True(t, res.OK(), "%+v", res)
		require.Equal(t, c1, gittest.Run(t, up, "rev-parse", "refs/heads/feature"))
		require.Equal(t, c1, gittest.Run(t, up, "rev-parse", "refs/tags/t1"))

		// A new branch with new objects.
		gittest.Run(t, w.work, "checkout", "-q", "-b", "topic")
		c2 := w.commit(t, "two")
		_, pack := w.bundle(t, "topic", "^"+c1)
		res, err = r.Push(t.Context(), PushRequest{Updates: []Update{{Ref: "refs/heads/topic", Old: ZeroID, New: c2}}, Pack: pack})
		require.NoError(t, err)
		require.True(t, res.OK(), "%+v", res)
		require.Equal(t, c2, gittest.Run(t, up, "rev-parse", "refs/heads/topic"))

		// Deletes send no pack.
		res, err = r.Push(t.Context(), PushRequest{Updates: []Update{{Ref: "refs/heads/feature", Old: c1, New: ZeroID}}})
		require.NoError(t, err)
		require.True(t, res.OK(), "%+v", res)
		ok, err := up.Ok(t.Context(), "rev-parse", "-q", "--verify", "refs/heads/feature")
		require.NoError(t, err)
		require.False(t, ok)
	})
}

// Old ids make the push a compare-and-swap: if upstream moved since we
// looked, the ref is refused and upstream keeps its tip.
func TestStaleOldIDIsRefused(t *testing.T) {
	eachTransport(t, func(t *testing.T, w *world) {
		up := w.newBare(t, "repo")
		c1 := w.commit(t, "one")
		w.seed(t, "repo", "master")
		c2 := w.commit(t, "two")
		w.seed(t, "repo", "master") // someone else moved upstream to c2
		c3 := w.commit(t, "three")

		_, pack := w.bundle(t, "master", "^"+c1)
		res, err := w.remote(t, "repo").Push(t.Context(), PushRequest{
			Updates: []Update{{Ref: "refs/heads/master", Old: c1, New: c3}},
			Pack:    pack,
		})
		require.NoError(t, err)
		require.False(t, res.OK())
		require.Empty(t, res.UnpackError)
		require.NotEmpty(t, res.Refs["refs/heads/master"])
		require.Equal(t, c2, gittest.Run(t, up, "rev-parse", "refs/heads/master"))

		// A create of a ref that exists is refused the same way.
		res, err = w.remote(t, "repo").Push(t.Context(), PushRequest{
			Updates: []Update{{Ref: "refs/heads/master", Old: ZeroID, New: c1}},
		})
		require.NoError(t, err)
		require.NotEmpty(t, res.Refs["refs/heads/master"])
		require.Equal(t, c2, gittest.Run(t, up, "rev-parse", "refs/heads/master"))
	})
}

func TestAtomicPushWithOneStaleRef(t *testing.T) {
	eachTransport(t, func(t *testing.T, w *world) {
		up := w.newBare(t, "repo")
		c1 := w.commit(t, "one")
		w.seed(t, "repo", "master")
		c2 := w.commit(t, "two")
		w.seed(t, "repo", "master")
		c3 := w.commit(t, "three")
		updates := []Update{
			{Ref: "refs/heads/master", Old: c1, New: c3}, // stale: upstream is at c2
			{Ref: "refs/heads/next", Old: ZeroID, New: c3},
		}

		_, pack := w.bundle(t, "master", "^"+c2)
		res, err := w.remote(t, "repo").Push(t.Context(), PushRequest{Updates: updates, Pack: pack, Atomic: true})
		require.NoError(t, err)
		require.False(t, res.OK())
		require.NotEmpty(t, res.Refs["refs/heads/master"])
		require.Equal(t, "atomic transaction failed", res.Refs["refs/heads/next"])
		require.Equal(t, c2, gittest.Run(t, up, "rev-parse", "refs/heads/master"))
		ok, err := up.Ok(t.Context(), "rev-parse", "-q", "--verify", "refs/heads/next")
		require.NoError(t, err)
		require.False(t, ok, "an atomic push must change nothing when one ref fails")

		// Without atomic, the good ref lands and the stale one does not.
		_, pack = w.bundle(t, "master", "^"+c2)
		res, err = w.remote(t, "repo").Push(t.Context(), PushRequest{Updates: updates, Pack: pack})
		require.NoError(t, err)
		require.NotEmpty(t, res.Refs["refs/heads/master"])
		require.Equal(t, "", res.Refs["refs/heads/next"])
		require.Equal(t, c3, gittest.Run(t, up, "rev-parse", "refs/heads/next"))
	})
}

func TestPushOptionsReachHooks(t *testing.T) {
	eachTransport(t, func(t *testing.T, w *world) {
		up := w.newBare(t, "repo")
		c1 := w.commit(t, "one")
		w.seed(t, "repo", "master")
		c2 := w.commit(t, "two")
		_, pack := w.bundle(t, "master", "^"+c1)

		// Without receive.advertisePushOptions upstream takes none.
		_, err := w.remote(t, "repo").Push(t.Context(), PushRequest{
			Updates: []Update{{Ref: "refs/heads/master", Old: c1, New: c2}}, Pack: pack, Options: []string{"ci.skip"},
		})
		require.ErrorContains(t, err, "upstream does not accept push options")
		require.Equal(t, c1, gittest.Run(t, up, "rev-parse", "refs/heads/master"))

		gittest.Run(t, up, "config", "receive.advertisePushOptions", "true")
		out := filepath.Join(t.TempDir(), "options")
		gitDir := filepath.Join(w.root, "owner", "repo.git")
		hook := "#!/bin/sh\n" +
			"{ echo \"count=$GIT_PUSH_OPTION_COUNT\"; echo \"0=$GIT_PUSH_OPTION_0\"; echo \"1=$GIT_PUSH_OPTION_1\"; } >" + out + "\n" +
			"echo 'hello from the pre-receive hook' >&2\n"
		gittest.Script(t, filepath.Join(gitDir, "hooks", "pre-receive"), hook)

		_, pack = w.bundle(t, "master", "^"+c1)
		res, err := w.remote(t, "repo").Push(t.Context(), PushRequest{
			Updates: []Update{{Ref: "refs/heads/master", Old: c1, New: c2}}, Pack: pack,
			Options: []string{"ci.skip", "reason=release 1.0"},
		})
		require.NoError(t, err)
		require.True(t, res.OK(), "%+v", res)
		got, err := os.ReadFile(out)
		require.NoError(t, err)
		require.Equal(t, "count=2\n0=ci.skip\n1=reason=release 1.0\n", string(got))
		require.Contains(t, res.Messages, "hello from the pre-receive hook")
	})
}

func TestHookRefusalIsReported(t *testing.T) {
	eachTransport(t, func(t *testing.T, w *world) {
		up := w.newBare(t, "repo")
		c1 := w.commit(t, "one")
		w.seed(t, "repo", "master")
		c2 := w.commit(t, "two")
		hook := "#!/bin/sh\necho 'GH006: Protected branch update failed' >&2\nexit 1\n"
		gittest.Script(t, filepath.Join(w.root, "owner", "repo.git", "hooks", "pre-receive"), hook)
		_, pack := w.bundle(t, "master", "^"+c1)
		res, err := w.remote(t, "repo").Push(t.Context(), PushRequest{
			Updates: []Update{{Ref: "refs/heads/master", Old: c1, New: c2}}, Pack: pack,
		})
		require.NoError(t, err)
		require.Equal(t, "pre-receive hook declined", res.Refs["refs/heads/master"])
		require.Contains(t, res.Messages, "GH006: Protected branch update failed")
		require.Equal(t, c1, gittest.Run(t, up, "rev-parse", "refs/heads/master"))
	})
}

// A pack that lacks objects the update needs is refused by upstream's
// checks, and nothing moves.
func TestIncompletePackIsRefused(t *testing.T) {
	eachTransport(t, func(t *testing.T, w *world) {
		up := w.newBare(t, "repo")
		c1 := w.commit(t, "one")
		w.seed(t, "repo", "master")
		w.commit(t, "two")
		c3 := w.commit(t, "three")
		_, pack := w.bundle(t, "master", "^master~1") // lacks "two"
		res, err := w.remote(t, "repo").Push(t.Context(), PushRequest{
			Updates: []Update{{Ref: "refs/heads/master", Old: c1, New: c3}}, Pack: pack,
		})
		require.NoError(t, err)
		require.False(t, res.OK())
		require.Equal(t, c1, gittest.Run(t, up, "rev-parse", "refs/heads/master"))
	})
}

func TestPackReadErrorIsReported(t *testing.T) {
	eachTransport(t, func(t *testing.T, w *world) {
		up := w.newBare(t, "repo")
		c1 := w.commit(t, "one")
		w.seed(t, "repo", "master")
		c2 := w.commit(t, "two")
		_, pack := w.bundle(t, "master", "^"+c1)
		broken := io.MultiReader(io.LimitReader(pack, 20), iotest.ErrReader(errors.New("disk on fire")))
		_, err := w.remote(t, "repo").Push(t.Context(), PushRequest{
			Updates: []Update{{Ref: "refs/heads/master", Old: c1, New: c2}}, Pack: broken,
		})
		require.ErrorContains(t, err, "disk on fire")
		require.Equal(t, c1, gittest.Run(t, up, "rev-parse", "refs/heads/master"))
	})
}

func TestMissingRepository(t *testing.T) {
	eachTransport(t, func(t *testing.T, w *world) {
		r := w.remote(t, "absent")
		_, err := r.List(t.Context())
		require.ErrorIs(t, err, ErrNotFound)
		_, err = r.Push(t.Context(), PushRequest{Updates: []Update{{Ref: "refs/heads/x", Old: ZeroID, New: strings.Repeat("a", 40)}}})
		require.ErrorIs(t, err, ErrNotFound)
		require.Contains(t, err.Error(), "owner/absent.git")
	})

	// A folder that is not a repository.
	dir := t.TempDir()
	r, err := New("file://"+dir, "")
	require.NoError(t, err)
	_, err = r.List(t.Context())
	require.ErrorIs(t, err, ErrNotFound)
	require.ErrorContains(t, err, "is not a git repository")
}

func TestWrongTokenIsErrAuth(t *testing.T) {
	w := newWorld(t, "http")
	w.newBare(t, "repo")
	for _, tok := range []string{"", "ghp_wrong"} {
		r, err := New(w.url("repo"), tok)
		require.NoError(t, err)
		_, err = r.List(t.Context())
		require.ErrorIs(t, err, ErrAuth)
		_, err = r.Push(t.Context(), PushRequest{Updates: []Update{{Ref: "refs/heads/x", Old: ZeroID, New: strings.Repeat("a", 40)}}})
		require.ErrorIs(t, err, ErrAuth)
		require.ErrorContains(t, err, "check the upstream token")
		require.NotContains(t, err.Error(), tok+"x") // nothing token-like in the message
	}
}

func TestRequestValidation(t *testing.T) {
	r, err := New("file:///nonexistent/x.git", "")
	require.NoError(t, err)
	a := strings.Repeat("a", 40)
	for _, c := range []struct {
		req  PushRequest
		want string
	}{
		{PushRequest{}, "no ref updates"},
		{PushRequest{Updates: []Update{{Ref: "master", Old: ZeroID, New: a}}}, "invalid ref name"},
		{PushRequest{Updates: []Update{{Ref: "refs/heads/a..b", Old: ZeroID, New: a}}}, "invalid ref name"},
		{PushRequest{Updates: []Update{{Ref: "refs/heads/x", Old: ZeroID, New: "abc"}}}, "40 lowercase hex"},
		{PushRequest{Updates: []Update{{Ref: "refs/heads/x", Old: ZeroID, New: strings.ToUpper(a)}}}, "40 lowercase hex"},
		{PushRequest{Updates: []Update{{Ref: "refs/heads/x", Old: ZeroID, New: ZeroID}}}, "both zero"},
		{PushRequest{Updates: []Update{{Ref: "refs/heads/x", Old: ZeroID, New: a}, {Ref: "refs/heads/x", Old: ZeroID, New: a}}}, "updated twice"},
		{PushRequest{Updates: []Update{{Ref: "refs/heads/x", Old: a, New: ZeroID}}, Pack: strings.NewReader("PACK")}, "only deletes"},
		{PushRequest{Updates: []Update{{Ref: "refs/heads/x", Old: ZeroID, New: a}}, Options: []string{"a\nb"}}, "NUL or newline"},
	} {
		_, err := r.Push(t.Context(), c.req)
		require.ErrorContains(t, err, c.want)
	}
}

func TestNew(t *testing.T) {
	for _, c := range []struct{ url, want string }{
		{"https://x-access-token:secret@github.com/o/r.git", "must not contain credentials"},
		{"https://github.com/o/r.git?x=1", "must not have a query"},
		{"ssh://git@github.com/o/r.git", "unsupported scheme"},
		{"file://relative/x.git", "file URLs name a local path"},
		{"file:x.git", "must not have a query or fragment"},
		{"https:///o/r.git", "has no host"},
		{"/abs/x.git", "unsupported scheme"},
		{"https://x:secret@github.com/o/r.git#frag", "must not have a query or fragment"},
		{"https://x:secret@github.com:port/o/r.git", "parse upstream URL"},
	} {
		_, err := New(c.url, "")
		require.ErrorContains(t, err, c.want, c.url)
		require.NotContains(t, err.Error(), "secret")
	}
	_, err := New("https://github.com/o/r.git", "bad token")
	require.ErrorContains(t, err, "token contains spaces")

	r, err := New("https://github.com/o/r.git/", "t")
	require.NoError(t, err)
	require.Equal(t, "https://github.com/o/r.git", r.base.String())
}

func TestRedact(t *testing.T) {
	tok := "ghp_a+b/c=d:e"
	r, err := New("https://github.com/o/r.git", tok)
	require.NoError(t, err)
	// githost.TokenForms is the list the fake host watches for: the token,
	// base64 with and without "x-access-token:", and URL-escaped forms.
	for _, form := range githost.TokenForms(tok) {
		got := r.Redact("before " + form + " after")
		require.NotContains(t, got, form)
		require.NotContains(t, got, tok)
		require.True(t, strings.HasPrefix(got, "before ") && strings.HasSuffix(got, " after"), got)
	}
	require.Equal(t, "Authorization: Basic ***", r.Redact("Authorization: "+r.basicAuth()))
	require.Equal(t, "https://x:***@github.com", r.Redact("https://x:"+url.QueryEscape(tok)+"@github.com"))

	empty, err := New("https://github.com/o/r.git", "")
	require.NoError(t, err)
	require.Equal(t, "nothing to hide", empty.Redact("nothing to hide"))
}

// The caller's own git commands (fetch, ls-remote) get the token from
// GitEnv alone, never consult a credential helper, never prompt, and show
// the token nowhere, not even under GIT_TRACE_CURL.
func TestGitEnv(t *testing.T) {
	w := newWorld(t, "http")
	w.newBare(t, "repo")
	c1 := w.commit(t, "one")
	w.seed(t, "repo", "master")

	// A global credential helper that knows the right token: if git ever
	// asked it, a wrong token would still get in, and the marker appear.
	home := t.TempDir()
	marker := filepath.Join(home, "helper-was-asked")
	helper := fmt.Sprintf("!f() { touch %s; echo username=x-access-token; echo password=%s; }; f", marker, testToken)
	require.NoError(t, os.WriteFile(filepath.Join(home, ".gitconfig"), []byte("[credential]\n\thelper = "+strings.ReplaceAll(helper, `"`, `\"`)+"\n"), 0o644))

	lsRemote := func(token string) (string, string, error) {
		r, err := New(w.url("repo"), token)
		require.NoError(t, err)
		env := append([]string{"HOME=" + home, "XDG_CONFIG_HOME=" + filepath.Join(home, ".config"), "GIT_TRACE=1", "GIT_TRACE_CURL=1"}, r.GitEnv()...)
		var stdout, stderr bytes.Buffer
		c := gitx.Repo{Env: env}.Command(t.Context(), "ls-remote", w.url("repo"))
		c.Stdout, c.Stderr = &stdout, &stderr
		err = c.Run()
		return stdout.String(), stderr.String(), err
	}

	out, trace, err := lsRemote(testToken)
	require.NoError(t, err, trace)
	require.Contains(t, out, c1+"\trefs/heads/master")
	for _, form := range githost.TokenForms(testToken) {
		require.NotContains(t, trace, form)
	}

	_, trace, err = lsRemote("ghp_wrong")
	require.Error(t, err)
	require.Contains(t, trace, "terminal prompts disabled")
	require.NotContains(t, trace, "ghp_wrong")
	require.NoFileExists(t, marker)
	r, err := New(w.url("repo"), "ghp_wrong")
	require.NoError(t, err)
	require.NotContains(t, strings.Join(os.Args, " "), "ghp_wrong")
	require.Contains(t, r.GitEnv("transfer.fsckObjects=true"), "GIT_CONFIG_KEY_3=transfer.fsckObjects")
}

// A push streams the pack: the Go heap allocates a small fraction of the
// pack's size, whatever that size is.
func TestPushLargePackInFlatMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("pushes 48 MiB twice")
	}
	eachTransport(t, func(t *testing.T, w *world) {
		if w.host != nil {
			// githost watches /proc for the token every 25 ms from this
			// very process, which allocates in proportion to how long the
			// push takes; a plain http-backend host allocates next to
			// nothing, so what is measured is the client.
			w.host = nil
			w.token = ""
			srv := httptest.NewServer(plainHost(t, w.root))
			t.Cleanup(srv.Close)
			w.plainURL = srv.URL
		}
		up := w.newBare(t, "repo")
		// Random bytes do not compress, so the pack is as big as the file.
		data := make([]byte, 48<<20)
		_, _ = rand.NewChaCha8([32]byte{1}).Read(data)
		require.NoError(t, os.WriteFile(filepath.Join(w.work.Dir, "big.bin"), data, 0o644))
		data = nil
		gittest.Run(t, w.work, "add", "big.bin")
		gittest.Run(t, w.work, "commit", "-q", "-m", "big")
		tip := gittest.Run(t, w.work, "rev-parse", "HEAD")
		path := filepath.Join(t.TempDir(), "big.bundle")
		gittest.Run(t, w.work, "bundle", "create", "-q", path, "master")
		h, pack, err := bundle.OpenPack(path)
		require.NoError(t, err)
		defer pack.Close()
		st, err := os.Stat(path)
		require.NoError(t, err)
		packSize := uint64(st.Size() - h.Len)

		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		res, err := w.remote(t, "repo").Push(t.Context(), PushRequest{
			Updates: []Update{{Ref: "refs/heads/master", Old: ZeroID, New: tip}},
			Pack:    pack,
		})
		runtime.ReadMemStats(&after)
		require.NoError(t, err)
		require.True(t, res.OK(), "%+v", res)
		require.Equal(t, tip, gittest.Run(t, up, "rev-parse", "refs/heads/master"))

		alloc := after.TotalAlloc - before.TotalAlloc
		t.Logf("pack %.1f MiB; Go allocated %.2f MiB during the push", float64(packSize)/(1<<20), float64(alloc)/(1<<20))
		require.Less(t, alloc, packSize/16, "the push must stream the pack, not buffer it")
	})
}

// plainHost serves the repositories under root with git http-backend and
// nothing else: no token, no watching.
func plainHost(t *testing.T, root string) http.Handler {
	gitPath, err := exec.LookPath("git")
	require.NoError(t, err)
	spool := t.TempDir()
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		// net/http/cgi refuses chunked bodies: spool to a file first.
		if r.Body != nil && r.Body != http.NoBody {
			f, err := os.CreateTemp(spool, "body-")
			if err != nil {
				http.Error(rw, err.Error(), http.StatusInternalServerError)
				return
			}
			defer os.Remove(f.Name())
			defer f.Close()
			n, err := io.Copy(f, r.Body)
			if err == nil {
				_, err = f.Seek(0, io.SeekStart)
			}
			if err != nil {
				http.Error(rw, err.Error(), http.StatusInternalServerError)
				return
			}
			r.Body, r.ContentLength, r.TransferEncoding = f, n, nil
		}
		(&cgi.Handler{
			Path: gitPath, Args: []string{"http-backend"}, Root: "/",
			Env: []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1", "GIT_CONFIG_NOSYSTEM=1", "HOME=" + spool,
				"GIT_CONFIG_COUNT=1", "GIT_CONFIG_KEY_0=http.receivepack", "GIT_CONFIG_VALUE_0=true"},
			InheritEnv: []string{"PATH"},
		}).ServeHTTP(rw, r)
	})
}

// TestPushRefNamesGitAccepts: names that git-check-ref-format accepts
// (and the relay's server checks with gitx.ValidRefName) go upstream, as
// they do with git push: a branch or tag that starts with '-', a
// component that is "@".
func TestPushRefNamesGitAccepts(t *testing.T) {
	eachTransport(t, func(t *testing.T, w *world) {
		up := w.newBare(t, "repo")
		c1 := w.commit(t, "one")
		w.seed(t, "repo", "master")
		names := []string{"refs/heads/-x", "refs/tags/-v1", "refs/heads/@", "refs/heads/a/@/b"}
		var ups []Update
		for _, n := range names {
			ups = append(ups, Update{Ref: n, Old: ZeroID, New: c1})
		}
		res, err := w.remote(t, "repo").Push(t.Context(), PushRequest{Updates: ups})
		require.NoError(t, err)
		require.True(t, res.OK(), "%+v", res)
		for _, n := range names {
			require.Equal(t, c1, gittest.Run(t, up, "rev-parse", "--verify", n))
		}
	})
}

// TestRefsOfSkipsBrokenNames: an advertisement that names a ref with a
// newline or another name git refuses lists the good refs only (the
// relay's listing is one ref per line).
func TestRefsOfSkipsBrokenNames(t *testing.T) {
	one, two := strings.Repeat("1", 40), strings.Repeat("2", 40)
	var b bytes.Buffer
	e := pktline.NewEncoder(&b)
	require.NoError(t, e.EncodeString(one+" refs/heads/a\nb\x00ofs-delta symref=HEAD:refs/heads/master\n"))
	require.NoError(t, e.EncodeString(two+" refs/heads/master\n"))
	require.NoError(t, e.EncodeString(two+" refs/tags/x..y\n"))
	require.NoError(t, e.EncodeString(one+" refs/tags/x..y^{}\n"))
	require.NoError(t, e.EncodeString(one+" refs/tags/v1\n"))
	require.NoError(t, e.Flush())
	adv, err := decodeAdvertisement(&b, "")
	require.NoError(t, err)
	refs, err := refsOf(adv)
	require.NoError(t, err)
	require.Equal(t, map[string]string{"refs/heads/master": two, "refs/tags/v1": one}, refs.Refs)
	require.Empty(t, refs.Peeled)
	require.Equal(t, "refs/heads/master", refs.Head)
}
