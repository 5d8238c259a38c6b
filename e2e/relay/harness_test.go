package relay

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/git-relay/git-relay/internal/edgeproxy"
	"github.com/git-relay/git-relay/internal/githost"
	"github.com/git-relay/git-relay/internal/gittest"
	"github.com/git-relay/git-relay/internal/gitx"
	"github.com/git-relay/git-relay/internal/shape"
)

// params is the testscript setup shared by every script folder.
func params(dir string) testscript.Params {
	return testscript.Params{
		Dir:                 dir,
		Setup:               setup,
		Cmds:                commands,
		Condition:           condition,
		RequireExplicitExec: true,
		RequireUniqueNames:  true,
	}
}

// commands are the harness's script commands, all in-process.
var commands = map[string]func(ts *testscript.TestScript, neg bool, args []string){
	"relay-up":         cmdRelayUp,
	"upstream-init":    cmdUpstreamInit,
	"proxy-tamper":     cmdProxyTamper,
	"proxy-reset":      cmdProxyReset,
	"proxy-bytes":      cmdProxyBytes,
	"proxy-bytes-max":  cmdProxyBytesMax,
	"proxy-bytes-min":  cmdProxyBytesMin,
	"proxy-requests":   cmdProxyRequests,
	"exchanges":        cmdExchanges,
	"server-mem":       cmdServerMem,
	"flood":            cmdFlood,
	"trickle":          cmdTrickle,
	"proxy-record":     cmdProxyRecord,
	"proxy-replay":     cmdProxyReplay,
	"proxy-forbid":     cmdProxyForbid,
	"helper-kill":      cmdHelperKill,
	"cap-helpers":      cmdCapHelpers,
	"make-tags":        cmdMakeTags,
	"upstream-objects": cmdUpstreamObjects,
	"upstream-count":   cmdUpstreamCount,
	"proxy-clean":      cmdProxyClean,
	"proxy-violations": cmdProxyViolations,
	"no-token-leak":    cmdNoTokenLeak,
	"server-kill":      cmdServerKill,
	"server-restart":   cmdServerRestart,
	"random-file":      cmdRandomFile,
	"capture":          cmdCapture,
	"http":             cmdHTTP,
	"upstream-rev":     cmdUpstreamRev,
	"exec-may-fail":    cmdExecMayFail,
	"edge-up":          cmdEdgeUp,
}

// hermeticVars make every git in a script (and the relay server's) read
// only $WORK/home/.gitconfig and produce the same ids on every run.
func hermeticVars(work string) []string {
	return append(gittest.Vars(filepath.Join(work, "home")), "UPSTREAM="+filepath.Join(work, "upstream"))
}

// passVars are the variables a script may set for the relay server
// besides the hermetic ones (testscript keeps no list we could read).
var passVars = []string{
	"WORK", "PATH", "HOME", "TMPDIR", "GOTRACEBACK", "GOCOVERDIR", "GORACE", "GODEBUG",
	"GIT_TRACE", "GIT_TRACE_PACKET", "GIT_TRACE_CURL", "GIT_TRACE_SETUP", "GIT_TRACE_PERFORMANCE",
	"GIT_TRACE2", "GIT_TRACE2_EVENT", "GIT_CURL_VERBOSE", "GIT_TRACE_REDACT",
	"GITHUB_TOKEN", "GIT_RELAY_URL", "GIT_RELAY_KEY_FILE",
}

type stateKey struct{}

// state is one script's relay, proxy and upstream.
type state struct {
	work  string
	names []string // variables passed to the server

	mu         sync.Mutex
	server     *serverProc
	serverArgs []string
	listen     string
	proxy      *edgeproxy.Proxy
	proxyLog   *lockedFile
	host       *githost.Host
	tokens     []string
	// logMark is the server log's size at the last proxy-reset: the
	// exchanges command counts what the server logged after it.
	logMark int64
	// memMark is the server's peak memory at the last server-mem.
	memMark int64
	// recorded holds the requests proxy-record kept.
	recorded []edgeproxy.Request
	// upCount counts the git host's requests upstream-count watches.
	upCount atomic.Int64
	edges   []*serverProc // edge processes (edge-up), stopped first
}

// jqBundle is the real history the scripts that need one clone:
// ../shared/repos/jq.bundle beside the checkout.
func jqBundle() string {
	p, err := filepath.Abs(filepath.Join("..", "..", "..", "shared", "repos", "jq.bundle"))
	if err != nil {
		return ""
	}
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}

// condition answers [jq]: whether the real history is there. In CI it
// must be: a script that would skip fails instead.
func condition(cond string) (bool, error) {
	switch cond {
	case "jq":
		if jqBundle() == "" {
			if os.Getenv("CI") == "true" {
				return false, errors.New("../shared/repos/jq.bundle is missing, and CI needs it")
			}
			return false, nil
		}
		return true, nil
	}
	return false, fmt.Errorf("unknown condition %q", cond)
}

func setup(env *testscript.Env) error {
	vars := hermeticVars(env.WorkDir)
	if jq := jqBundle(); jq != "" {
		vars = append(vars, "JQ_BUNDLE="+jq)
	}
	st := &state{work: env.WorkDir, names: slices.Clone(passVars)}
	for _, kv := range vars {
		name, value, _ := strings.Cut(kv, "=")
		env.Setenv(name, value)
		st.names = append(st.names, name)
	}
	home := env.Getenv("HOME")
	for _, dir := range []string{home, env.Getenv("UPSTREAM")} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(home, ".gitconfig"), []byte(gittest.Config), 0o644); err != nil {
		return err
	}
	env.Values[stateKey{}] = st
	t := env.T()
	env.Defer(func() { st.teardown(t) })
	return nil
}

func getState(ts *testscript.TestScript) *state {
	return ts.Value(stateKey{}).(*state)
}

// environ is the script's environment as the relay server gets it.
func (st *state) environ(ts *testscript.TestScript) []string {
	var env []string
	seen := map[string]bool{}
	for _, name := range st.names {
		if seen[name] {
			continue
		}
		seen[name] = true
		if v := ts.Getenv(name); v != "" {
			env = append(env, name+"="+v)
		}
	}
	return env
}

func lookPath(ts *testscript.TestScript, name string) string {
	for _, dir := range filepath.SplitList(ts.Getenv("PATH")) {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	ts.Fatalf("%s is not on the script's PATH", name)
	return ""
}

func randomToken() string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 36)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return "ghp_" + string(b)
}

// cmdRelayUp starts the relay server (a subprocess), the edge proxy in
// front of it and, with --http-upstream, a token-guarded git host, and
// points the global git config at the proxy.
func cmdRelayUp(ts *testscript.TestScript, neg bool, args []string) {
	if neg {
		ts.Fatalf("unsupported: ! relay-up")
	}
	st := getState(ts)
	if st.proxy != nil {
		ts.Fatalf("relay-up: the relay is already up")
	}
	fset := flag.NewFlagSet("relay-up", flag.ContinueOnError)
	fset.SetOutput(io.Discard)
	httpUpstream := fset.Bool("http-upstream", false, "upstream is git http-backend demanding a token")
	allowForce := fset.Bool("allow-force", false, "start the server with --allow-force")
	maxBody := fset.Int64("max-body", 0, "server --max-body and client relay.maxBody")
	proxyLimit := fset.Int64("proxy-limit", 0, "the proxy's body cap (default 4,500,000)")
	badToken := fset.Bool("bad-token", false, "give the server a token the git host refuses")
	maxSessions := fset.Int("max-sessions", 0, "server --max-sessions")
	tlsOn := fset.Bool("tls", false, "serve HTTPS with a new self-signed certificate ($WORK/tls.crt); relay.url points straight at the server")
	downRate := fset.Int64("down-rate", 0, "bytes per second the proxy's answers to clients flow at (0: no cap)")
	if err := fset.Parse(args); err != nil || fset.NArg() > 0 {
		ts.Fatalf("usage: relay-up [--http-upstream] [--allow-force] [--max-body N] [--proxy-limit N] [--bad-token] [--max-sessions N] [--tls] [--down-rate N] (%v)", err)
	}
	if *badToken && !*httpUpstream {
		ts.Fatalf("relay-up: --bad-token needs --http-upstream")
	}

	work := st.work
	upstream := ts.Getenv("UPSTREAM")
	dataDir := filepath.Join(work, "relay-data")
	keyFile := filepath.Join(work, "relay.key")
	ts.Check(os.MkdirAll(upstream, 0o755))
	env := st.environ(ts)

	bin := lookPath(ts, "git-relay-server")
	var key bytes.Buffer
	keygen := exec.Command(bin, "keygen")
	keygen.Env = env
	keygen.Stdout = &key
	var keyErr bytes.Buffer
	keygen.Stderr = &keyErr
	if err := keygen.Run(); err != nil {
		ts.Fatalf("git-relay-server keygen: %v: %s", err, keyErr.String())
	}
	if strings.TrimSpace(key.String()) == "" {
		ts.Fatalf("git-relay-server keygen printed no key")
	}
	ts.Check(os.WriteFile(keyFile, key.Bytes(), 0o600))

	template := "file://" + upstream + "/{repo}.git"
	serverArgs := []string{"serve", "--listen", "127.0.0.1:0", "--data-dir", dataDir, "--key-file", keyFile}
	if *httpUpstream {
		token := randomToken()
		h, err := githost.Start(upstream, token)
		ts.Check(err)
		given := token
		if *badToken {
			given = randomToken()
		}
		st.mu.Lock()
		st.host = h
		st.tokens = append(st.tokens, token)
		if given != token {
			// The wrong token must not leak either.
			st.tokens = append(st.tokens, given)
		}
		st.mu.Unlock()
		tokenFile := filepath.Join(work, "token")
		ts.Check(os.WriteFile(tokenFile, []byte(given+"\n"), 0o600))
		template = h.URL + "/{repo}.git"
		serverArgs = append(serverArgs, "--token-file", tokenFile)
		ts.Setenv("GITHOST", h.URL)
	}
	serverArgs = append(serverArgs, "--upstream", template)
	if *maxBody > 0 {
		serverArgs = append(serverArgs, "--max-body", strconv.FormatInt(*maxBody, 10))
	}
	if *allowForce {
		serverArgs = append(serverArgs, "--allow-force")
	}
	if *maxSessions > 0 {
		serverArgs = append(serverArgs, "--max-sessions", strconv.Itoa(*maxSessions))
	}
	if *tlsOn {
		crt, key := filepath.Join(work, "tls.crt"), filepath.Join(work, "tls.key")
		ts.Check(writeSelfSigned(crt, key))
		serverArgs = append(serverArgs, "--tls-cert", crt, "--tls-key", key)
	}

	p, err := startServer(bin, serverArgs, env, filepath.Join(work, "server.log"))
	ts.Check(err)
	st.mu.Lock()
	st.server = p
	st.serverArgs = serverArgs
	st.listen = p.addr
	st.mu.Unlock()

	plog, err := openLocked(filepath.Join(work, "proxy.log"))
	ts.Check(err)
	st.proxyLog = plog
	var secrets []string
	for _, tok := range st.tokens {
		secrets = append(secrets, githost.TokenForms(tok)...)
	}
	proxy, err := edgeproxy.Start(p.url, edgeproxy.Options{MaxBody: *proxyLimit, Secrets: secrets, Logf: plog.Logf, ShapeDown: shape.Link{Rate: *downRate}})
	ts.Check(err)
	st.mu.Lock()
	st.proxy = proxy
	st.mu.Unlock()

	cfg := filepath.Join(ts.Getenv("HOME"), ".gitconfig")
	set := func(k, v string) {
		_, err := gitx.Repo{Env: env}.Run(context.Background(), "config", "--file", cfg, k, v)
		ts.Check(err)
	}
	if *tlsOn {
		set("relay.url", p.url+"/api/gr")
	} else {
		set("relay.url", proxy.URL+"/api/game")
	}
	set("relay.keyFile", keyFile)
	if *maxBody > 0 {
		set("relay.maxBody", strconv.FormatInt(*maxBody, 10))
	}
	ts.Setenv("RELAY_SERVER", p.url)
	ts.Setenv("RELAY_PROXY", proxy.URL)
	ts.Setenv("RELAY_URL", proxy.URL+"/api/game")
	ts.Logf("relay %s behind proxy %s, upstream %s", p.url, proxy.URL, template)
}

// serverProc is one run of git-relay-server serve.
type serverProc struct {
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
	url     string
	addr    string
	logPath string
	killed  bool // we sent SIGKILL: a non-zero exit is expected
}

var listening = regexp.MustCompile(`listening on (https?://(127\.0\.0\.1:[0-9]+))`)

// insecure is for the harness's own health checks of a server with a
// self-signed certificate; git and the helper check it for real.
var insecure = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}

func startServer(bin string, args, env []string, logPath string) (*serverProc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	fi, err := logf.Stat()
	if err != nil {
		return nil, err
	}
	offset := fi.Size()
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	cmd.Stdout = logf
	cmd.Stderr = logf
	// Its own process group, so that a crash test can kill it with every
	// git it started; Pdeathsig, so that it dies if the test binary does.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start git-relay-server: %w", err)
	}
	p := &serverProc{cmd: cmd, done: make(chan struct{}), logPath: logPath}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()

	deadline := time.Now().Add(30 * time.Second)
	for p.url == "" {
		if b, err := os.ReadFile(logPath); err == nil && int64(len(b)) >= offset {
			if m := listening.FindSubmatch(b[offset:]); m != nil {
				p.url, p.addr = string(m[1]), string(m[2])
				break
			}
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("git-relay-server %s exited before listening (%v):\n%s", strings.Join(args, " "), p.waitErr, tail(logPath, 30))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.killGroup()
			return nil, fmt.Errorf("git-relay-server printed no \"listening on http://…\" line within 30s:\n%s", tail(logPath, 30))
		}
	}
	for {
		resp, err := insecure.Get(p.url + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p, nil
			}
		}
		if time.Now().After(deadline) {
			p.killGroup()
			return nil, fmt.Errorf("GET %s/healthz did not answer 200 within 30s (%v)", p.url, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *serverProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *serverProc) waitFor(d time.Duration) bool {
	select {
	case <-p.done:
		return true
	case <-time.After(d):
		return false
	}
}

// killGroup kills the server and every process it started.
func (p *serverProc) killGroup() {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
}

// terminate sends SIGTERM and waits; it reports a server that takes too
// long or exits with anything but 0.
func (p *serverProc) terminate() error {
	if p.exited() {
		if p.killed {
			return nil
		}
		return fmt.Errorf("git-relay-server had already exited (%v)", p.waitErr)
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if !p.waitFor(30 * time.Second) {
		p.killGroup()
		<-p.done
		return fmt.Errorf("git-relay-server did not exit within 30s of SIGTERM")
	}
	if p.waitErr != nil {
		return fmt.Errorf("git-relay-server exited with %v after SIGTERM, want status 0", p.waitErr)
	}
	return nil
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// teardown stops everything a script started and fails the script on any
// proxy violation, token leak, or server that does not exit 0 on SIGTERM.
func (st *state) teardown(t testscript.T) {
	st.mu.Lock()
	defer st.mu.Unlock()
	var problems []string
	for _, e := range st.edges {
		if err := e.terminate(); err != nil {
			problems = append(problems, "edge: "+err.Error())
		}
	}
	if p := st.server; p != nil {
		if err := p.terminate(); err != nil {
			problems = append(problems, err.Error())
		}
		p.killGroup() // any git it left behind
	}
	if st.proxy != nil {
		_ = st.proxy.Close()
		for _, v := range st.proxy.Violations() {
			problems = append(problems, "edge proxy saw "+v.String())
		}
	}
	if st.host != nil {
		_ = st.host.Close()
		for _, l := range st.host.Leaks() {
			problems = append(problems, "upstream token on a command line: "+l.String())
		}
	}
	if st.proxyLog != nil {
		st.proxyLog.Close()
	}
	failed := len(problems) > 0
	if f, ok := t.(interface{ Failed() bool }); ok && f.Failed() {
		failed = true
	}
	if failed && st.server != nil {
		t.Log("server.log (last 40 lines):\n" + tail(filepath.Join(st.work, "server.log"), 40))
		t.Log("proxy.log (last 20 lines):\n" + tail(filepath.Join(st.work, "proxy.log"), 20))
	}
	if len(problems) == 0 {
		return
	}
	msg := "after the script:\n\t" + strings.Join(problems, "\n\t")
	if e, ok := t.(interface{ Errorf(string, ...any) }); ok {
		e.Errorf("%s", msg)
		return
	}
	t.Log(msg)
	t.FailNow()
}

// lockedFile is a log file that the proxy's goroutines share.
type lockedFile struct {
	mu sync.Mutex
	f  *os.File
}

func openLocked(path string) (*lockedFile, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	return &lockedFile{f: f}, nil
}

func (l *lockedFile) Logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f != nil {
		fmt.Fprintf(l.f, time.Now().Format("15:04:05.000 ")+format+"\n", args...)
	}
}

func (l *lockedFile) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
}

var repoName = regexp.MustCompile(`^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$`)

// cmdUpstreamInit creates a bare repository upstream: upstream-init owner/repo [branch].
func cmdUpstreamInit(ts *testscript.TestScript, neg bool, args []string) {
	reflog := true
	if len(args) > 0 && args[0] == "--no-reflog" {
		reflog, args = false, args[1:]
	}
	if neg || len(args) < 1 || len(args) > 2 || !repoName.MatchString(args[0]) {
		ts.Fatalf("usage: upstream-init [--no-reflog] owner/repo [branch]")
	}
	branch := "master"
	if len(args) == 2 {
		branch = args[1]
	}
	dir := filepath.Join(ts.Getenv("UPSTREAM"), args[0]+".git")
	env := getState(ts).environ(ts)
	_, err := gitx.Repo{Env: env}.Run(context.Background(), "init", "--quiet", "--bare", "-b", branch, dir)
	ts.Check(err)
	if !reflog {
		return // a hundred thousand refs need no hundred thousand reflogs
	}
	// A reflog upstream lets a script count how many times a ref moved:
	// a push must land exactly once, even across a crash.
	_, err = gitx.Repo{GitDir: dir, Env: env}.Run(context.Background(), "config", "core.logAllRefUpdates", "always")
	ts.Check(err)
}

// cmdUpstreamRev prints the id of a ref upstream: upstream-rev owner/repo REF.
// It fails if the ref does not exist (use `! upstream-rev` to say it must not).
func cmdUpstreamRev(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 {
		ts.Fatalf("usage: upstream-rev owner/repo REF")
	}
	dir := filepath.Join(ts.Getenv("UPSTREAM"), args[0]+".git")
	out, err := gitx.Repo{GitDir: dir, Env: getState(ts).environ(ts)}.Run(context.Background(), "rev-parse", "--verify", "--quiet", args[1]+"^{}")
	switch {
	case err != nil && !neg:
		ts.Fatalf("upstream %s has no %s", args[0], args[1])
	case err == nil && neg:
		ts.Fatalf("upstream %s has %s at %s, want none", args[0], args[1], out)
	case err == nil:
		fmt.Fprintln(ts.Stdout(), out)
	}
}

func proxyOf(ts *testscript.TestScript) *edgeproxy.Proxy {
	st := getState(ts)
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.proxy == nil {
		ts.Fatalf("no relay: run relay-up first")
	}
	return st.proxy
}

// cmdProxyTamper installs a canned tamper mode (see edgeproxy.TamperUsage).
func cmdProxyTamper(ts *testscript.TestScript, neg bool, args []string) {
	if neg {
		ts.Fatalf("unsupported: ! proxy-tamper")
	}
	t, err := edgeproxy.ParseTamper(args)
	ts.Check(err)
	proxyOf(ts).SetTamper(t)
}

func cmdProxyReset(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) > 0 {
		ts.Fatalf("usage: proxy-reset")
	}
	proxyOf(ts).Reset()
	st := getState(ts)
	if fi, err := os.Stat(filepath.Join(st.work, "server.log")); err == nil {
		st.mu.Lock()
		st.logMark = fi.Size()
		st.mu.Unlock()
	}
}

var exchangeLine = regexp.MustCompile(`msg=exchange id=[0-9a-f]+ kind=([a-z]+)`)

// cmdExchanges prints how many exchanges of KIND (push, fetch, refs,
// caps) the relay server opened since the last proxy-reset: what the proxy
// cannot tell, as every exchange travels the same routes, sealed.
func cmdExchanges(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: exchanges KIND")
	}
	st := getState(ts)
	st.mu.Lock()
	mark := st.logMark
	st.mu.Unlock()
	b, err := os.ReadFile(filepath.Join(st.work, "server.log"))
	ts.Check(err)
	if int64(len(b)) < mark {
		mark = 0
	}
	n := 0
	for _, m := range exchangeLine.FindAllSubmatch(b[mark:], -1) {
		if string(m[1]) == args[0] {
			n++
		}
	}
	fmt.Fprintln(ts.Stdout(), n)
}

func direction(ts *testscript.TestScript, s edgeproxy.Stats, dir string) int64 {
	switch dir {
	case "up":
		return s.Up
	case "down":
		return s.Down
	}
	ts.Fatalf("direction %q: want up or down", dir)
	return 0
}

// cmdProxyBytes prints the body bytes that crossed since the last reset.
func cmdProxyBytes(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: proxy-bytes up|down")
	}
	fmt.Fprintln(ts.Stdout(), direction(ts, proxyOf(ts).Stats(), args[0]))
}

func bound(ts *testscript.TestScript, args []string, usage string) (int64, int64) {
	if len(args) != 2 {
		ts.Fatalf("usage: %s", usage)
	}
	n, err := parseSize(args[1])
	if err != nil {
		ts.Fatalf("%s: %v", usage, err)
	}
	s := proxyOf(ts).Stats()
	got := direction(ts, s, args[0])
	ts.Logf("%d bytes %s in %d requests %v", got, args[0], s.Requests, s.PerPath)
	return got, n
}

// cmdProxyBytesMax fails if more than N body bytes went that way since
// the last reset.
func cmdProxyBytesMax(ts *testscript.TestScript, neg bool, args []string) {
	got, n := bound(ts, args, "proxy-bytes-max up|down N")
	if (got > n) != neg {
		ts.Fatalf("%d bytes went %s, limit %d", got, args[0], n)
	}
}

// cmdProxyBytesMin fails if fewer than N body bytes went that way.
func cmdProxyBytesMin(ts *testscript.TestScript, neg bool, args []string) {
	got, n := bound(ts, args, "proxy-bytes-min up|down N")
	if (got < n) != neg {
		ts.Fatalf("%d bytes went %s, want at least %d", got, args[0], n)
	}
}

// cmdProxyRequests prints how many requests since the last reset had a
// path matching REGEXP (all of them without one).
func cmdProxyRequests(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) > 1 {
		ts.Fatalf("usage: proxy-requests [REGEXP]")
	}
	re := regexp.MustCompile("")
	if len(args) == 1 {
		var err error
		re, err = regexp.Compile(args[0])
		ts.Check(err)
	}
	n := 0
	for path, c := range proxyOf(ts).Stats().PerPath {
		if re.MatchString(path) {
			n += c
		}
	}
	fmt.Fprintln(ts.Stdout(), n)
}

// cmdProxyClean fails on any plaintext, size or secret violation so far.
func cmdProxyClean(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) > 0 {
		ts.Fatalf("usage: proxy-clean")
	}
	v := proxyOf(ts).Violations()
	for _, x := range v {
		ts.Logf("violation: %s", x)
	}
	if (len(v) > 0) != neg {
		if neg {
			ts.Fatalf("the proxy saw no violation")
		}
		ts.Fatalf("the proxy saw %d violations", len(v))
	}
}

// cmdProxyViolations prints the violations so far and forgets them, for a
// script that provokes one on purpose and checks it with stdout.
func cmdProxyViolations(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) > 0 {
		ts.Fatalf("usage: proxy-violations")
	}
	for _, v := range proxyOf(ts).TakeViolations() {
		fmt.Fprintln(ts.Stdout(), v.String())
	}
}

// cmdNoTokenLeak fails if any form of the upstream token is in the server
// log, under the data folder, on a command line, or in traffic the proxy saw.
func cmdNoTokenLeak(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) > 0 {
		ts.Fatalf("usage: no-token-leak")
	}
	st := getState(ts)
	st.mu.Lock()
	tokens, host, proxy := slices.Clone(st.tokens), st.host, st.proxy
	st.mu.Unlock()
	if len(tokens) == 0 {
		ts.Fatalf("no-token-leak: no token in play; use relay-up --http-upstream")
	}
	var forms []string
	for _, t := range tokens {
		forms = append(forms, githost.TokenForms(t)...)
	}
	var leaks []string
	check := func(name string, data []byte) {
		for i, f := range forms {
			if bytes.Contains(data, []byte(f)) {
				leaks = append(leaks, fmt.Sprintf("%s holds token form #%d", name, i))
			}
		}
	}
	for _, name := range []string{"server.log", "proxy.log"} {
		if b, err := os.ReadFile(filepath.Join(st.work, name)); err == nil {
			check(name, b)
		}
	}
	data := filepath.Join(st.work, "relay-data")
	files := 0
	err := filepath.WalkDir(data, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil // removed while we walked
		}
		files++
		rel, _ := filepath.Rel(st.work, path)
		check(rel, b)
		return nil
	})
	ts.Check(err)
	for _, t := range tokens {
		for _, l := range githost.ScanCmdlines(t, os.Getpid()) {
			leaks = append(leaks, "command line now: "+l.String())
		}
	}
	if host != nil {
		for _, l := range host.Leaks() {
			leaks = append(leaks, "command line: "+l.String())
		}
	}
	if proxy != nil {
		for _, v := range proxy.Violations() {
			if v.Kind == edgeproxy.KindSecret {
				leaks = append(leaks, "proxy: "+v.String())
			}
		}
	}
	ts.Logf("looked for %d token forms in the logs, %d files under relay-data, every command line and the proxy's traffic", len(forms), files)
	if len(leaks) > 0 {
		ts.Fatalf("the upstream token leaked:\n\t%s", strings.Join(leaks, "\n\t"))
	}
}

// cmdServerKill stops the relay server.
//
//	server-kill            SIGTERM, and it must exit 0
//	server-kill -9         SIGKILL the server and every git it started
//	server-kill -9 --on REGEXP [--nth N] [--after]
//	                       arm: SIGKILL when the Nth request whose proxy path
//	                       matches passes the proxy (before it is forwarded,
//	                       or --after the server answered, whose answer is
//	                       then lost); replaces any proxy-tamper
//	server-kill -9 --on-upstream REGEXP
//	                       arm: SIGKILL when the git host gets a request
//	                       whose path matches (needs --http-upstream)
func cmdServerKill(ts *testscript.TestScript, neg bool, args []string) {
	if neg {
		ts.Fatalf("unsupported: ! server-kill")
	}
	fset := flag.NewFlagSet("server-kill", flag.ContinueOnError)
	fset.SetOutput(io.Discard)
	nine := fset.Bool("9", false, "SIGKILL instead of SIGTERM")
	on := fset.String("on", "", "arm: kill on a proxy request matching this")
	nth := fset.Int("nth", 1, "arm: on the Nth matching request")
	after := fset.Bool("after", false, "arm: kill once the server has answered")
	onUpstream := fset.String("on-upstream", "", "arm: kill on an upstream request matching this")
	if err := fset.Parse(args); err != nil || fset.NArg() > 0 {
		ts.Fatalf("usage: server-kill [-9] [--on REGEXP [--nth N] [--after] | --on-upstream REGEXP] (%v)", err)
	}
	st := getState(ts)
	st.mu.Lock()
	p, proxy, host := st.server, st.proxy, st.host
	st.mu.Unlock()
	if p == nil {
		ts.Fatalf("no relay server: run relay-up first")
	}
	kill := func() {
		st.mu.Lock()
		defer st.mu.Unlock()
		if st.server != nil && !st.server.exited() {
			st.server.killed = true
			st.server.killGroup()
			<-st.server.done
		}
	}
	switch {
	case *on != "":
		if !*nine {
			ts.Fatalf("server-kill --on needs -9")
		}
		re, err := regexp.Compile(*on)
		ts.Check(err)
		var mu sync.Mutex
		seen := 0
		hit := func(path string) bool {
			mu.Lock()
			defer mu.Unlock()
			if !re.MatchString(path) {
				return false
			}
			seen++
			return seen == *nth
		}
		t := &edgeproxy.Tamper{Name: "server-kill"}
		if *after {
			t.OnResponse = func(req *edgeproxy.Request, resp *edgeproxy.Response) {
				if hit(req.Path) {
					kill()
					resp.Status, resp.Body = http.StatusBadGateway, []byte("edgeproxy: relay crashed")
				}
			}
		} else {
			t.OnRequest = func(req *edgeproxy.Request) {
				if hit(req.Path) {
					kill()
				}
			}
		}
		proxy.SetTamper(t)
	case *onUpstream != "":
		if !*nine {
			ts.Fatalf("server-kill --on-upstream needs -9")
		}
		if host == nil {
			ts.Fatalf("server-kill --on-upstream needs relay-up --http-upstream")
		}
		re, err := regexp.Compile(*onUpstream)
		ts.Check(err)
		var once sync.Once
		host.SetHook(func(r *http.Request) {
			if re.MatchString(r.URL.Path) {
				once.Do(kill)
			}
		})
	case *nine:
		kill()
	default:
		st.mu.Lock()
		err := st.server.terminate()
		st.mu.Unlock()
		ts.Check(err)
	}
}

// cmdServerRestart starts the server again, with the same flags on the
// same port, after server-kill.
func cmdServerRestart(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) > 0 {
		ts.Fatalf("usage: server-restart")
	}
	st := getState(ts)
	st.mu.Lock()
	old := st.server
	st.mu.Unlock()
	if old == nil {
		ts.Fatalf("no relay server: run relay-up first")
	}
	if !old.exited() {
		ts.Fatalf("the relay server is still running: server-kill first")
	}
	if host := st.host; host != nil {
		host.SetHook(nil)
	}
	args = slices.Clone(st.serverArgs)
	for i := range args {
		if args[i] == "--listen" {
			args[i+1] = st.listen
		}
	}
	p, err := startServer(lookPath(ts, "git-relay-server"), args, st.environ(ts), filepath.Join(st.work, "server.log"))
	ts.Check(err)
	st.mu.Lock()
	st.server = p
	st.mu.Unlock()
}

func parseSize(s string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "K"), strings.HasSuffix(s, "k"):
		mult, s = 1<<10, s[:len(s)-1]
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, s[:len(s)-1]
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("size %q: want a byte count such as 65536, 64K or 9M", s)
	}
	return n * mult, nil
}

// cmdRandomFile writes SIZE deterministic pseudo-random bytes (they do not
// compress, like a pack): random-file NAME SIZE SEED.
func cmdRandomFile(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 3 {
		ts.Fatalf("usage: random-file NAME SIZE SEED")
	}
	size, err := parseSize(args[1])
	ts.Check(err)
	seed, err := strconv.ParseUint(args[2], 10, 64)
	ts.Check(err)
	r := mrand.New(mrand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	buf := make([]byte, size)
	for i := 0; i < len(buf); i += 8 {
		v := r.Uint64()
		for j := 0; j < 8 && i+j < len(buf); j++ {
			buf[i+j] = byte(v >> (8 * j))
		}
	}
	ts.Check(os.WriteFile(ts.MkAbs(args[0]), buf, 0o644))
}

// cmdCapture sets NAME to the previous command's stdout (or stderr),
// trimmed: capture NAME [stdout|stderr].
func cmdCapture(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 1 || len(args) > 2 {
		ts.Fatalf("usage: capture NAME [stdout|stderr]")
	}
	from := "stdout"
	if len(args) == 2 {
		from = args[1]
	}
	ts.Setenv(args[0], strings.TrimSpace(ts.ReadFile(from)))
}

// cmdHTTP sends one unsigned request and prints the status code, then the
// body: http METHOD URL [BODYFILE].
func cmdHTTP(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 || len(args) > 3 {
		ts.Fatalf("usage: http METHOD URL [BODYFILE]")
	}
	var body io.Reader
	if len(args) == 3 {
		b, err := os.ReadFile(ts.MkAbs(args[2]))
		ts.Check(err)
		body = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, args[0], args[1], body)
	ts.Check(err)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintf(ts.Stdout(), "error %v\n", err)
		return
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	fmt.Fprintf(ts.Stdout(), "%d\n%s\n", resp.StatusCode, b)
}

// cmdExecMayFail runs a program like exec but accepts any exit status, for
// a step whose outcome may rightly go either way (a client that retries
// may get through a tampering proxy): exec-may-fail PROG [ARGS...].
func cmdExecMayFail(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) == 0 {
		ts.Fatalf("usage: exec-may-fail PROG [ARGS...]")
	}
	if err := ts.Exec(args[0], args[1:]...); err != nil {
		ts.Logf("[%v, accepted]", err)
	}
}
