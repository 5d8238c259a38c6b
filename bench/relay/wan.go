package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/git-relay/git-relay/internal/githost"
	"github.com/git-relay/git-relay/internal/shape"
)

// The WAN link: both legs of a relay push in production cross one, the
// developer's to the edge and the relay's to GitHub.
var wanLink = shape.Link{Rate: 50 * shape.Mbit, Latency: 40 * time.Millisecond}

// wanResult is the WAN case: the medians of each leg alone and of both.
type wanResult struct {
	rounds   int
	upload   float64 // (a) relay push, shaped edge, unshaped upstream
	upstream float64 // (b) direct push to the shaped upstream
	both     float64 // (c) relay push, both links shaped
	// serverPeakKiB is the peak RSS of the server of (c).
	serverPeakKiB int64
}

// wanCase measures the first push over WAN links, to show whether the
// relay overlaps its two legs (cut-through) or pays their sum. Upstream is
// git's smart HTTP server behind githost (the token-checking stand-in for
// GitHub), at loopback speed for (a) and behind the shaped link for (b)
// and (c); the edge proxy in front of each relay server is shaped. Each
// round:
//
//	(a) upload leg: a relay push through the shaped proxy, to the fast host;
//	(b) upstream leg: a direct `git push` to the shaped host;
//	(c) both: a relay push through the shaped proxy, to the shaped host.
//
// Perfect overlap makes (c) max(a, b); none makes it a + b.
func (b *bench) wanCase(ctx context.Context) error {
	root := filepath.Join(b.work, "githost")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return err
	}
	token := hex.EncodeToString(raw[:])
	tokenFile := filepath.Join(b.work, "githost.token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		return err
	}
	fast, err := githost.Start(root, token)
	if err != nil {
		return err
	}
	defer fast.Close()
	slow, err := githost.StartWith(root, token, githost.Options{ShapeIn: wanLink, ShapeOut: wanLink})
	if err != nil {
		return err
	}
	defer slow.Close()
	secrets := githost.TokenForms(token)
	srvA, err := b.startServer(serverConfig{name: "wan-upload", upstream: fast.URL + "/{repo}.git", tokenFile: tokenFile, proxy: true, shape: wanLink, secrets: secrets})
	if err != nil {
		return err
	}
	srvC, err := b.startServer(serverConfig{name: "wan-both", upstream: slow.URL + "/{repo}.git", tokenFile: tokenFile, proxy: true, shape: wanLink, secrets: secrets})
	if err != nil {
		return err
	}
	// The direct push carries the token in a header set from the
	// environment, never on a command line.
	directEnv := []string{"GIT_CONFIG_COUNT=1", "GIT_CONFIG_KEY_0=http.extraHeader", "GIT_CONFIG_VALUE_0=Authorization: Bearer " + token}

	fmt.Printf("WAN: first push over %d Mbit/s and %v each way, edge and upstream (%d rounds)...\n",
		wanLink.Rate/shape.Mbit, wanLink.Latency, b.o.wanRounds)
	var rounds []wanResult
	for i := range b.o.wanRounds {
		repo := func(leg string) string { return fmt.Sprintf("bench/wan-%s-%d", leg, i) }
		for _, leg := range []string{"a", "b", "c"} {
			if err := b.initBare(ctx, filepath.Join(root, repo(leg)+".git")); err != nil {
				return err
			}
		}
		var r wanResult
		legs := []func() error{
			func() error {
				srvC.idle(ctx)
				m, _, _, _, err := b.timeRelay(ctx, srvA, side{dir: b.src.Dir, env: []string{"GIT_RELAY_URL=" + srvA.base}, args: []string{"push", "-q", relayURL(repo("a")), "master"}})
				if err != nil {
					return fmt.Errorf("(a) relay push, shaped edge: %w (server log: %s)", err, srvA.logPath)
				}
				r.upload = m.Seconds
				return nil
			},
			func() error {
				srvA.idle(ctx)
				srvC.idle(ctx)
				m, err := measureEnv(ctx, directEnv, b.src.Dir, "push", "-q", slow.URL+"/"+repo("b")+".git", "master")
				if err != nil {
					return fmt.Errorf("(b) direct push to the shaped host: %w", err)
				}
				r.upstream = m.Seconds
				return nil
			},
			func() error {
				srvA.idle(ctx)
				m, peak, _, _, err := b.timeRelay(ctx, srvC, side{dir: b.src.Dir, env: []string{"GIT_RELAY_URL=" + srvC.base}, args: []string{"push", "-q", relayURL(repo("c")), "master"}})
				if err != nil {
					return fmt.Errorf("(c) relay push, both shaped: %w (server log: %s)", err, srvC.logPath)
				}
				r.both, r.serverPeakKiB = m.Seconds, peak
				return nil
			},
		}
		// Each round starts with another leg, so that none is always
		// first or last.
		for k := range legs {
			if err := legs[(i+k)%len(legs)](); err != nil {
				return err
			}
		}
		if showRounds {
			fmt.Printf("  WAN: (a) %.0f ms, (b) %.0f ms, (c) %.0f ms\n", r.upload*1000, r.upstream*1000, r.both*1000)
		}
		dirs := make([]string, 0, 3)
		for _, leg := range []string{"a", "b", "c"} {
			dirs = append(dirs, filepath.Join(root, repo(leg)+".git"))
		}
		if err := b.sameTip(ctx, "master", dirs...); err != nil {
			return err
		}
		// Scan what crossed, off the clock, and let the proxies drop the
		// bodies they kept for it.
		for _, s := range []*relayServer{srvA, srvC} {
			for _, v := range s.proxy.TakeViolations() {
				b.notes = append(b.notes, fmt.Sprintf("edge proxy violation (server %s): %s", s.name, v))
			}
		}
		rounds = append(rounds, r)
	}
	for _, h := range []*githost.Host{fast, slow} {
		for _, l := range h.Leaks() {
			b.notes = append(b.notes, "the upstream token showed on a command line: "+l.String())
		}
	}
	res := &wanResult{
		rounds:   len(rounds),
		upload:   median(rounds, func(r wanResult) float64 { return r.upload }),
		upstream: median(rounds, func(r wanResult) float64 { return r.upstream }),
		both:     median(rounds, func(r wanResult) float64 { return r.both }),
	}
	for _, r := range rounds {
		res.serverPeakKiB = max(res.serverPeakKiB, r.serverPeakKiB)
	}
	b.wan = res
	b.stopServer(srvA)
	b.stopServer(srvC)
	return nil
}
