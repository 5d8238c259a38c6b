package main

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

func dur(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

func verdict(ok bool) string {
	if ok {
		return "ok"
	}
	return "MISSED"
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// report prints the two sides' medians, the ratio with its goal, each
// instance's peak memory with its goal, and the CPU time spent.
func report(o options, total int64, local, s3 *side) {
	mib := float64(total) / (1 << 20)
	fmt.Println()
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "%d at once, %.1f MiB (median of %d)\tlocal store, 1 instance\tS3 store, 2 instances\tS3/local\tgoal\t\n", concurrency, mib, o.rounds)
	row := func(name string, l, s []time.Duration) {
		lm, sm := median(l), median(s)
		ratio := sm.Seconds() / lm.Seconds()
		fmt.Fprintf(tw, "%s\t%s (%.1f MiB/s)\t%s (%.1f MiB/s)\t%.2f×\t≤ %.1f×  %s\t\n", name,
			dur(lm), mib/lm.Seconds(), dur(sm), mib/sm.Seconds(), ratio, goalRatio, verdict(ratio <= goalRatio))
	}
	row("pushes", local.push.took, s3.push.took)
	row("clones (first after the push)", local.clone.took, s3.clone.took)
	row("clones again (warm mirrors)", local.again.took, s3.again.took)
	both := func(s *side) []time.Duration {
		out := make([]time.Duration, len(s.push.took))
		for i := range out {
			out[i] = s.push.took[i] + s.clone.took[i]
		}
		return out
	}
	row("pushes + first clones", both(local), both(s3))
	tw.Flush()

	fmt.Println()
	tw = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "peak memory (VmHWM)\tpushes\tclones\tclones again\tgoal\t")
	for _, s := range []*side{local, s3} {
		for i, in := range s.inst {
			p, c, a := s.push.peakKiB[i], s.clone.peakKiB[i], s.again.peakKiB[i]
			fmt.Fprintf(tw, "%s side, %s\t%.1f MiB\t%.1f MiB\t%.1f MiB\t≤ %d MiB  %s\t\n", s.name, in.Name,
				float64(p)/1024, float64(c)/1024, float64(a)/1024, goalServerMiB, verdict(p > 0 && c > 0 && a > 0 && max(p, c, a) <= goalServerMiB*1024))
		}
	}
	tw.Flush()

	fmt.Println()
	tw = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CPU time per round (information)\tpushes\tclones\tclones again\t")
	rounds := time.Duration(o.rounds)
	for _, s := range []*side{local, s3} {
		for i, in := range s.inst {
			fmt.Fprintf(tw, "%s side, %s and its gits\t%s\t%s\t%s\t\n", s.name, in.Name, dur(s.push.cpu[i]/rounds), dur(s.clone.cpu[i]/rounds), dur(s.again.cpu[i]/rounds))
		}
		if s.s3PID != 0 {
			fmt.Fprintf(tw, "%s side, versitygw\t%s\t%s\t%s\t\n", s.name, dur(s.push.s3CPU/rounds), dur(s.clone.s3CPU/rounds), dur(s.again.s3CPU/rounds))
		}
	}
	tw.Flush()
	fmt.Println()
	tw = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "requests, whole run (haproxy's log)\tlocal: n, mean, max\tS3: n, mean, max\t")
	lr, sr := routeTimes(local), routeTimes(s3)
	for _, route := range []string{"x", "x/up", "x/status", "x/down"} {
		fmt.Fprintf(tw, "%s\t%s\t%s\t\n", route, lr[route], sr[route])
	}
	tw.Flush()
	fmt.Println("(an Open, x, holds its answer until the exchange's answer is on its way: the mirror's refresh")
	fmt.Println("from upstream and upload-pack's start are in its time; x/down is one answer chunk, written by")
	fmt.Println("the instance running upload-pack and read through any)")

	fmt.Println("\ntime: from the start of the first of the six git commands to the end of the last; the sides")
	fmt.Println("run one after the other, in alternating order, on the same machine, so versitygw's work (and")
	fmt.Println("the clients') counts; peak memory: the server process alone (not its gits), reset before each")
	fmt.Println("phase; CPU: user and system time of the process and the children it reaped.")
}

// routeStats sums up the balancer's log for one route.
type routeStats struct {
	n         int
	sum, most time.Duration
}

func (r routeStats) String() string {
	if r.n == 0 {
		return "-"
	}
	return fmt.Sprintf("%d, %d ms, %d ms", r.n, (r.sum / time.Duration(r.n)).Milliseconds(), r.most.Milliseconds())
}

// routeTimes reads a side's balancer log: how many requests of each API
// route, and how long they took.
func routeTimes(s *side) map[string]routeStats {
	out := map[string]routeStats{}
	reqs, err := s.lb.Requests()
	if err != nil {
		return out
	}
	for _, r := range reqs {
		route, ok := strings.CutPrefix(r.Path, "/api/gr/")
		if !ok {
			continue
		}
		st := out[route]
		st.n++
		st.sum += r.Took
		st.most = max(st.most, r.Took)
		out[route] = st
	}
	return out
}
