package main

import (
	"fmt"
	"os"
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

func verdict(ok bool) string {
	if ok {
		return "ok"
	}
	return "MISSED"
}

// report prints the comparison table, the memory figures and the goals.
func (b *bench) report(serverTreeKiB int64) {
	fmt.Println()
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "time (median of %d)\tdirect\trelay\trelay/direct\tgoal\t\n", b.o.rounds)
	for _, r := range b.rows {
		if r.skipped != "" {
			fmt.Fprintf(tw, "%s\t\t\t%s\t\t\n", r.name, r.skipped)
			continue
		}
		ratio := r.relay.Seconds / r.direct.Seconds
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.2f×\t≤ %.1f×  %s\t\n", r.name, dur(r.direct.duration()), dur(r.relay.duration()), ratio, r.goal, verdict(ratio <= r.goal))
	}
	tw.Flush()

	fmt.Println()
	tw = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "peak RSS\tdirect\trelay\trelay−direct\tgoal\t")
	for _, r := range b.rows {
		if r.skipped != "" {
			continue
		}
		extra := r.relay.MaxRSSKiB - r.direct.MaxRSSKiB
		goal := ""
		if r.checkClientRSS {
			goal = fmt.Sprintf("≤ +%d MiB  %s", goalClientMiB, verdict(extra <= goalClientMiB*1024))
		}
		fmt.Fprintf(tw, "client, %s\t%s\t%s\t%+.1f MiB\t%s\t\n", r.name, mib(r.direct.MaxRSSKiB), mib(r.relay.MaxRSSKiB), float64(extra)/1024, goal)
	}
	for _, r := range b.rows {
		if r.skipped != "" || r.serverPeakKiB == 0 {
			continue
		}
		fmt.Fprintf(tw, "server process, %s\t\t%s\t\t≤ %d MiB  %s\t\n", r.name, mib(r.serverPeakKiB), goalServerMiB, verdict(r.serverPeakKiB <= goalServerMiB*1024))
	}
	if serverTreeKiB > 0 {
		fmt.Fprintf(tw, "server's largest process incl. its git children, whole run\t\t%s\t\t(information)\t\n", mib(serverTreeKiB))
	}
	tw.Flush()
	fmt.Println("\nclient peak: the largest process in `git …`'s tree (Maxrss from getrusage; for a direct push that")
	fmt.Println("includes the receiving receive-pack/index-pack, for a relay push the helper and its git bundle);")
	fmt.Println("server process: VmHWM of git-relay-server, reset before each relay command.")

	if b.srv.proxy != nil {
		fmt.Println()
		tw = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "edge traffic\tup\tdown\trequests\t")
		for _, r := range b.rows {
			if r.skipped != "" {
				continue
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t\n", r.name, size(r.trafficUp), size(r.trafficDown), r.requests)
		}
		tw.Flush()
	}
	for _, n := range b.notes {
		fmt.Println("note:", n)
	}
}
