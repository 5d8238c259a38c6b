package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

func mib(kib int64) string { return fmt.Sprintf("%.1f MiB", float64(kib)/1024) }

func size(n int64) string {
	if n < 1<<20 {
		return fmt.Sprintf("%.1f KiB", float64(n)/1024)
	}
	return fmt.Sprintf("%.2f MiB", float64(n)/(1<<20))
}

func dur(d time.Duration) string {
	if d < time.Second {
		return fmt.Sprintf("%d ms", d.Milliseconds())
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

func secs(s float64) string { return dur(time.Duration(s * float64(time.Second))) }

func signedSecs(s float64) string {
	if s < 0 {
		return "−" + secs(-s)
	}
	return "+" + secs(s)
}

// num prints a goal as written: 1.15, 1.2, 2.
func num(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

func verdict(ok bool) string {
	if ok {
		return "ok"
	}
	return "MISSED"
}

// goals counts the goals checked and those met, for the summary line.
type goals struct{ checked, met int }

func (g *goals) check(ok bool) string {
	g.checked++
	if ok {
		g.met++
	}
	return verdict(ok)
}

// report prints the comparison tables, the memory figures and the goals.
func (b *bench) report(serverTreeKiB int64) {
	var g goals
	fmt.Println()
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "time (median of rounds)\trounds\tdirect\trelay\trelay/direct\trelay−direct\tgoal\t")
	for _, r := range b.rows {
		if r.skipped != "" {
			fmt.Fprintf(tw, "%s\t\t\t\t%s\t\t\t\n", r.name, r.skipped)
			continue
		}
		ratio := r.relay.Seconds / r.direct.Seconds
		extra := r.relay.Seconds - r.direct.Seconds
		goal := "(information)"
		switch {
		case r.info:
		case r.overhead:
			goal = fmt.Sprintf("relay−direct ≤ %s  %s", secs(r.goal), g.check(extra <= r.goal))
		default:
			goal = fmt.Sprintf("≤ %s×  %s", num(r.goal), g.check(ratio <= r.goal))
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%.2f×\t%s\t%s\t\n", r.name, r.rounds, secs(r.direct.Seconds), secs(r.relay.Seconds), ratio, signedSecs(extra), goal)
	}
	tw.Flush()

	b.reportCPU()

	if w := b.wan; w != nil {
		fmt.Printf("\nWAN case, first push: %d Mbit/s and %v each way on the edge link and on the upstream link (median of %d)\n",
			wanLink.Rate*8/1_000_000, wanLink.Latency, w.rounds)
		tw = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "(a) upload leg: relay push, shaped edge, upstream at loopback speed\t%s\t\n", secs(w.upload))
		fmt.Fprintf(tw, "(b) upstream leg: direct git push to the shaped upstream\t%s\t\n", secs(w.upstream))
		fmt.Fprintf(tw, "(c) relay push, both links shaped\t%s\t\n", secs(w.both))
		longer := max(w.upload, w.upstream)
		fmt.Fprintf(tw, "(c) / max(a, b) = %s / %s\t%.2f×\t≤ %s×  %s\n", secs(w.both), secs(longer), w.both/longer, num(goalWAN), g.check(w.both <= goalWAN*longer))
		fmt.Fprintf(tw, "(c) / (a + b) = %s / %s\t%.2f×\t(1.00× is no overlap at all)\n", secs(w.both), secs(w.upload+w.upstream), w.both/(w.upload+w.upstream))
		tw.Flush()
	}

	fmt.Println()
	tw = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "peak RSS\tdirect\trelay\trelay−direct\tgoal\t")
	for _, r := range b.rows {
		if r.skipped != "" {
			continue
		}
		extra := r.relay.MaxRSSKiB - r.direct.MaxRSSKiB
		fmt.Fprintf(tw, "client, %s\t%s\t%s\t%+.1f MiB\t≤ +%d MiB  %s\t\n", r.name, mib(r.direct.MaxRSSKiB), mib(r.relay.MaxRSSKiB), float64(extra)/1024,
			goalClientMiB, g.check(extra <= goalClientMiB*1024))
	}
	for _, r := range b.rows {
		if r.skipped != "" || r.serverPeakKiB == 0 {
			continue
		}
		fmt.Fprintf(tw, "server process, %s\t\t%s\t\t≤ %d MiB  %s\t\n", r.name, mib(r.serverPeakKiB), goalServerMiB, g.check(r.serverPeakKiB <= goalServerMiB*1024))
	}
	if w := b.wan; w != nil && w.serverPeakKiB > 0 {
		fmt.Fprintf(tw, "server process, WAN (c)\t\t%s\t\t≤ %d MiB  %s\t\n", mib(w.serverPeakKiB), goalServerMiB, g.check(w.serverPeakKiB <= goalServerMiB*1024))
	}
	if f := b.flood; f != nil {
		fmt.Fprintf(tw, "server process, %d unauthenticated %.1f MB bodies at once (RSS before: %s)\t\t%s\t\t< %d MiB  %s\t\n",
			floodConns, float64(floodBody)/1e6, mib(f.rssBeforeKiB), mib(f.peakKiB), goalFloodMiB, g.check(f.peakKiB < goalFloodMiB*1024))
	}
	if serverTreeKiB > 0 {
		fmt.Fprintf(tw, "main server's largest process incl. its git children, whole run\t\t%s\t\t(information)\t\n", mib(serverTreeKiB))
	}
	tw.Flush()
	fmt.Println("\nclient peak: the largest process in `git …`'s tree (Maxrss from getrusage; for a direct push that")
	fmt.Println("includes the receiving receive-pack/index-pack, for a direct clone upload-pack and pack-objects, for")
	fmt.Println("the relay the helper and the git it runs); server process: VmHWM of git-relay-server, reset before")
	fmt.Println("each relay command (and before the flood).")
	if f := b.flood; f != nil {
		var parts []string
		for code, n := range f.codes {
			label := fmt.Sprint(code)
			if code < 0 {
				label = "no answer"
			}
			parts = append(parts, fmt.Sprintf("%s: %d", label, n))
		}
		fmt.Printf("flood: answered in %s, %s (want 401 for all %d)\n", dur(f.took), strings.Join(parts, ", "), floodConns)
		if f.codes[401] != floodConns {
			b.notes = append(b.notes, fmt.Sprintf("the flood's requests were not all answered 401: %v", f.codes))
		}
	}

	if !b.o.noProxy {
		fmt.Println()
		tw = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "edge traffic, relay side (first round)\tup\tdown\trequests\t")
		for _, r := range b.rows {
			if r.skipped != "" {
				continue
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t\n", r.name, size(r.trafficUp), size(r.trafficDown), r.requests)
		}
		tw.Flush()
	}
	fmt.Println()
	if len(b.stoppedClean) > 0 {
		fmt.Printf("servers that stopped cleanly on SIGTERM: %s\n", strings.Join(b.stoppedClean, ", "))
	}
	for _, n := range b.notes {
		fmt.Println("note:", n)
	}
	for _, f := range b.failed {
		fmt.Println("FAILED:", f)
	}
	fmt.Printf("goals met: %d of %d\n", g.met, g.checked)
}

// reportCPU prints where each row's CPU went. On a machine of a few CPUs
// that is where the relay's time goes: its processes run beside the
// client's git and take CPU from it, and a command cannot finish sooner
// than its CPU in all over the CPUs.
func (b *bench) reportCPU() {
	fmt.Println()
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CPU, user+system (median of rounds)\tdirect\trelay: git and helper\tserver and its git\tedge\trelay in all\trelay−direct\t")
	for _, r := range b.rows {
		if r.skipped != "" {
			continue
		}
		edge := "–"
		if !b.o.noProxy {
			edge = secs(r.edgeCPU)
		}
		all := r.relay.CPU + r.serverCPU + r.edgeCPU
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", r.name, secs(r.direct.CPU), secs(r.relay.CPU), secs(r.serverCPU), edge, secs(all), signedSecs(all-r.direct.CPU))
	}
	tw.Flush()
	fmt.Println("direct: git's process tree (for a clone with upload-pack and pack-objects, for a push with")
	fmt.Println("receive-pack and index-pack); relay: git's tree (git, the helper and the git it runs), the relay")
	fmt.Println("server with the git it ran while the command ran, and the edge proxy (the bench process).")
	fmt.Printf("On this machine's %d CPUs no command takes less than its CPU in all / %d.\n", runtime.NumCPU(), runtime.NumCPU())
}
