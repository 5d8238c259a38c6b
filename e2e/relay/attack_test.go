package relay

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/git-relay/git-relay/internal/edgeproxy"
	"github.com/git-relay/git-relay/internal/gittest"
	"github.com/git-relay/git-relay/internal/gitx"
	"github.com/git-relay/git-relay/internal/keyring"
	"github.com/git-relay/git-relay/internal/wire"
)

// Script commands that play an attacker against the relay server itself.

// serverMem reads the server's resident memory now and at its peak, in
// bytes, from /proc.
func serverMem(ts *testscript.TestScript) (rss, peak int64) {
	st := getState(ts)
	st.mu.Lock()
	p := st.server
	st.mu.Unlock()
	if p == nil {
		ts.Fatalf("no relay server: run relay-up first")
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	ts.Check(err)
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = kb << 10
		case "VmHWM:":
			peak = kb << 10
		}
	}
	return rss, peak
}

// cmdServerMem prints the server's peak resident memory in MiB, or with
// -max N fails if it grew by more than N MiB since the last reading.
//
//	server-mem            print "peak N MiB"
//	server-mem -grew N    fail if the peak grew by more than N MiB
func cmdServerMem(ts *testscript.TestScript, neg bool, args []string) {
	_, peak := serverMem(ts)
	st := getState(ts)
	switch {
	case len(args) == 0:
		st.mu.Lock()
		st.memMark = peak
		st.mu.Unlock()
		fmt.Fprintf(ts.Stdout(), "peak %d MiB\n", peak>>20)
	case len(args) == 2 && args[0] == "-grew":
		n, err := strconv.ParseInt(args[1], 10, 64)
		ts.Check(err)
		st.mu.Lock()
		grew := peak - st.memMark
		st.mu.Unlock()
		ts.Logf("server peak %d MiB, grew by %d MiB", peak>>20, grew>>20)
		if (grew > n<<20) != neg {
			ts.Fatalf("the server's peak memory grew by %d MiB (to %d MiB), limit %d MiB", grew>>20, peak>>20, n)
		}
	default:
		ts.Fatalf("usage: server-mem [-grew MiB]")
	}
}

// cmdFlood sends N requests at once straight to the server, each
// declaring a SIZE-byte body and sending all of it, with no valid
// signature, and prints how they were answered: flood N SIZE.
func cmdFlood(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: flood N SIZE")
	}
	n, err := strconv.Atoi(args[0])
	ts.Check(err)
	size, err := parseSize(args[1])
	ts.Check(err)
	st := getState(ts)
	body := make([]byte, size)
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[int]int{}
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", st.listen, 10*time.Second)
			if err != nil {
				mu.Lock()
				codes[-1]++
				mu.Unlock()
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(2 * time.Minute))
			fmt.Fprintf(c, "POST /api/gr/x HTTP/1.1\r\nHost: relay\r\nAuthorization: GR3-HMAC-SHA256 kid=01020304,ts=%d,nonce=%s,len=%d,sig=00\r\nContent-Length: %d\r\n\r\n",
				time.Now().UnixMilli(), wire.NewNonce(), size, size)
			// The body goes while the answer is read: the server answers
			// from the headers, and may close before taking it all.
			go func() { _, _ = c.Write(body) }()
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			code := -1
			if err == nil {
				code = resp.StatusCode
				resp.Body.Close()
			}
			mu.Lock()
			codes[code]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	fmt.Fprintln(ts.Stdout(), codes)
}

// cmdTrickle sends one request with a valid signature that declares a
// 4,500,000-byte body, then sends it one byte every two seconds, and
// prints how many seconds passed before the server cut it off (it fails
// after MAX seconds): trickle MAX.
func cmdTrickle(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: trickle MAX-SECONDS")
	}
	maxSecs, err := strconv.Atoi(args[0])
	ts.Check(err)
	st := getState(ts)
	ring, err := keyring.ReadFile(filepath.Join(st.work, "relay.key"))
	ts.Check(err)
	key := ring.Primary()
	const size = 4_500_000
	a := wire.Auth{TS: time.Now().UnixMilli(), Nonce: wire.NewNonce(), Len: size}
	auth := wire.SignRequest(key, "POST", wire.PathOpen, url.Values(nil), &a)
	c, err := net.Dial("tcp", st.listen)
	ts.Check(err)
	defer c.Close()
	start := time.Now()
	fmt.Fprintf(c, "POST /api/gr/x HTTP/1.1\r\nHost: relay\r\nAuthorization: %s\r\nContent-Length: %d\r\n\r\n", auth, size)
	closed := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, c)
		close(closed)
	}()
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-closed:
			fmt.Fprintf(ts.Stdout(), "cut after %d s\n", int(time.Since(start).Seconds()))
			return
		case <-t.C:
			if time.Since(start) > time.Duration(maxSecs)*time.Second {
				ts.Fatalf("the server still reads a trickled body after %d s", maxSecs)
			}
			_, _ = c.Write([]byte{'x'})
		}
	}
}

// cmdProxyRecord makes the proxy keep a copy of every request whose path
// matches REGEXP, for proxy-replay: proxy-record REGEXP.
func cmdProxyRecord(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: proxy-record REGEXP")
	}
	re, err := regexp.Compile(args[0])
	ts.Check(err)
	st := getState(ts)
	proxyOf(ts).SetTamper(&edgeproxy.Tamper{Name: "record", OnRequest: func(req *edgeproxy.Request) {
		if re.MatchString(req.Path) {
			c := *req
			c.Header = req.Header.Clone()
			c.Body = slices.Clone(req.Body)
			st.mu.Lock()
			st.recorded = append(st.recorded, c)
			st.mu.Unlock()
		}
	}})
}

// cmdProxyReplay sends every recorded request again, as the proxy could,
// straight to the server, and prints each answer's status.
func cmdProxyReplay(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 0 {
		ts.Fatalf("usage: proxy-replay")
	}
	st := getState(ts)
	st.mu.Lock()
	recorded := slices.Clone(st.recorded)
	base := st.server.url
	st.mu.Unlock()
	if len(recorded) == 0 {
		ts.Fatalf("proxy-replay: nothing recorded")
	}
	for _, r := range recorded {
		u := base + edgeproxy.ServerPrefix + strings.TrimPrefix(r.Path, edgeproxy.ClientPrefix)
		if r.Query != "" {
			u += "?" + r.Query
		}
		req, err := http.NewRequest(r.Method, u, bytes.NewReader(r.Body))
		ts.Check(err)
		for k, v := range r.Header {
			req.Header[k] = v
		}
		resp, err := http.DefaultClient.Do(req)
		ts.Check(err)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Fprintf(ts.Stdout(), "%s %s: %d %s\n", r.Method, r.Path, resp.StatusCode, bytes.TrimSpace(b))
	}
}

// cmdProxyForbid makes the proxy report any sighting of the words, in any
// body, header, path or query: proxy-forbid WORD...
func cmdProxyForbid(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) == 0 {
		ts.Fatalf("usage: proxy-forbid WORD...")
	}
	proxyOf(ts).Forbid(args...)
}

// writeSelfSigned writes a new self-signed certificate for 127.0.0.1 and
// its key, in PEM.
func writeSelfSigned(crtPath, keyPath string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "git-relay test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(crtPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	return os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
}

// helperPIDs lists the git-remote-relay processes of this script.
func helperPIDs(work string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || filepath.Base(string(bytes.SplitN(cmd, []byte{0}, 2)[0])) != "git-remote-relay" {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil || !bytes.Contains(env, []byte("\x00WORK="+work+"\x00")) {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

// cmdHelperKill arms the proxy to SIGKILL this script's git-remote-relay
// when the Nth request whose path matches passes it (before it is
// forwarded): helper-kill --on REGEXP [--nth N].
func cmdHelperKill(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 || args[0] != "--on" {
		ts.Fatalf("usage: helper-kill --on REGEXP [--nth N]")
	}
	re, err := regexp.Compile(args[1])
	ts.Check(err)
	nth := 1
	if len(args) == 4 && args[2] == "--nth" {
		nth, err = strconv.Atoi(args[3])
		ts.Check(err)
	} else if len(args) != 2 {
		ts.Fatalf("usage: helper-kill --on REGEXP [--nth N]")
	}
	st := getState(ts)
	var mu sync.Mutex
	seen := 0
	proxyOf(ts).SetTamper(&edgeproxy.Tamper{Name: "helper-kill", OnRequest: func(req *edgeproxy.Request) {
		mu.Lock()
		defer mu.Unlock()
		if !re.MatchString(req.Path) {
			return
		}
		seen++
		if seen != nth {
			return
		}
		for _, pid := range helperPIDs(st.work) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		req.Hangup = true
	}})
}

// cmdCapHelpers puts a git-remote-relay in front of the real one that
// counts its runs in $WORK/helper-runs and refuses to run more than N
// times: a chain of helpers starting helpers fails instead of growing
// without bound. cap-helpers N.
func cmdCapHelpers(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: cap-helpers N")
	}
	n, err := strconv.Atoi(args[0])
	ts.Check(err)
	real := lookPath(ts, "git-remote-relay")
	dir := ts.MkAbs("capbin")
	ts.Check(os.MkdirAll(dir, 0o755))
	runs := ts.MkAbs("helper-runs")
	script := fmt.Sprintf(`#!/bin/sh
echo run >> '%s'
if [ "$(wc -l < '%s')" -gt %d ]; then echo "git-remote-relay: more than %d runs: a helper chain does not end" >&2; exit 1; fi
exec '%s' "$@"
`, runs, runs, n, n, real)
	ts.Check(gittest.WriteExecutable(filepath.Join(dir, "git-remote-relay"), script))
	ts.Setenv("PATH", dir+string(os.PathListSeparator)+ts.Getenv("PATH"))
}

// cmdMakeTags makes N lightweight tags PREFIX0..PREFIX<N-1> on HEAD in the
// current repository, with one git: make-tags N PREFIX.
func cmdMakeTags(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: make-tags N PREFIX")
	}
	n, err := strconv.Atoi(args[0])
	ts.Check(err)
	repo := gitx.Repo{Dir: ts.MkAbs("."), Env: getState(ts).environ(ts)}
	head, err := repo.Run(context.Background(), "rev-parse", "HEAD")
	ts.Check(err)
	var in strings.Builder
	for i := range n {
		fmt.Fprintf(&in, "create refs/tags/%s%d %s\n", args[1], i, head)
	}
	_, err = repo.RunInput(context.Background(), strings.NewReader(in.String()), "update-ref", "--stdin")
	ts.Check(err)
}

// cmdUpstreamObjects prints what upstream's object store holds: loose
// objects, packs, and quarantines of pushes under way (receive-pack's
// tmp_objdir-incoming-*), waiting up to 20 s for quarantines to go:
// upstream-objects owner/repo.
func cmdUpstreamObjects(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: upstream-objects owner/repo")
	}
	objects := filepath.Join(ts.Getenv("UPSTREAM"), args[0]+".git", "objects")
	var loose, packs, incoming int
	deadline := time.Now().Add(20 * time.Second)
	for {
		loose, packs, incoming = 0, 0, 0
		entries, err := os.ReadDir(objects)
		ts.Check(err)
		for _, e := range entries {
			switch {
			case strings.HasPrefix(e.Name(), "tmp_objdir-incoming"), strings.HasPrefix(e.Name(), "incoming-"):
				incoming++
			case len(e.Name()) == 2:
				sub, _ := os.ReadDir(filepath.Join(objects, e.Name()))
				loose += len(sub)
			}
		}
		if p, err := filepath.Glob(filepath.Join(objects, "pack", "*.pack")); err == nil {
			packs = len(p)
		}
		if incoming == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Fprintf(ts.Stdout(), "loose %d packs %d incoming %d\n", loose, packs, incoming)
}

// cmdUpstreamCount arms a counter of the git host's requests whose path
// matches REGEXP (upstream-count REGEXP), or prints it (upstream-count).
func cmdUpstreamCount(ts *testscript.TestScript, neg bool, args []string) {
	st := getState(ts)
	st.mu.Lock()
	host := st.host
	st.mu.Unlock()
	if host == nil {
		ts.Fatalf("upstream-count needs relay-up --http-upstream")
	}
	switch len(args) {
	case 1:
		re, err := regexp.Compile(args[0])
		ts.Check(err)
		st.upCount.Store(0)
		host.SetHook(func(r *http.Request) {
			if re.MatchString(r.URL.Path) {
				st.upCount.Add(1)
			}
		})
	case 0:
		fmt.Fprintln(ts.Stdout(), st.upCount.Load())
	default:
		ts.Fatalf("usage: upstream-count [REGEXP]")
	}
}
