package helper

import (
	"fmt"
	"io"
	"sort"
	"time"
)

// ui prints to stderr, honouring git's verbosity and progress options.
type ui struct {
	w         io.Writer
	verbosity int  // 0 with -q, 1 by default, 2+ with -v
	progress  bool // git asks for progress when stderr is a terminal
	lastLen   int
}

func newUI(w io.Writer) *ui { return &ui{w: w, verbosity: 1} }

// status overwrites the current progress line.
func (u *ui) status(format string, a ...any) {
	if !u.progress || u.verbosity < 1 {
		return
	}
	msg := fmt.Sprintf("relay: "+format, a...)
	pad := ""
	if n := u.lastLen - len(msg); n > 0 {
		pad = fmt.Sprintf("%*s", n, "")
	}
	fmt.Fprintf(u.w, "\r%s%s", msg, pad)
	u.lastLen = len(msg)
}

// done ends a progress line.
func (u *ui) done(format string, a ...any) {
	if !u.progress || u.verbosity < 1 {
		return
	}
	u.status(format, a...)
	fmt.Fprintln(u.w)
	u.lastLen = 0
}

// detail prints a line with -v.
func (u *ui) detail(format string, a ...any) {
	if u.verbosity >= 2 {
		u.flushLine()
		fmt.Fprintf(u.w, "relay: "+format+"\n", a...)
	}
}

// warn always prints.
func (u *ui) warn(format string, a ...any) {
	u.flushLine()
	fmt.Fprintf(u.w, format+"\n", a...)
}

func (u *ui) flushLine() {
	if u.lastLen > 0 {
		fmt.Fprintln(u.w)
		u.lastLen = 0
	}
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.2f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.2f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}

func rate(n int64, d time.Duration) string {
	if d <= 0 {
		return ""
	}
	return humanBytes(int64(float64(n)/d.Seconds())) + "/s"
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
