// Package fuzztest holds what the fuzz targets share: a measure of the
// heap memory a call allocates, so that a target can assert that a small
// input never makes a parser allocate a large amount (a length field
// trusted before the bytes behind it arrive, a decompression window).
package fuzztest

import (
	"fmt"
	"os"
	"runtime"
	"testing"
	"time"
)

// Allocated returns the bytes of heap that fn allocates. Allocations of
// every goroutine count, so the figure is exact only when nothing else
// runs; the bounds that targets check leave room for that.
func Allocated(fn func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// Bounded runs fn and fails t if it allocated more than fixed bytes plus
// perInputByte for each of the inputLen bytes it was given: what a parser
// needs grows with what it reads, never with what a length field claims.
func Bounded(t testing.TB, inputLen int, fixed, perInputByte uint64, fn func()) {
	t.Helper()
	limit := fixed + perInputByte*uint64(inputLen)
	if n := Allocated(fn); n > limit {
		t.Fatalf("allocated %d bytes for %d bytes of input (limit %d)", n, inputLen, limit)
	}
}

// Watchdog ends the process when one input runs for longer than d, after
// printing every goroutine's stack: Go's fuzzing has no time limit of its
// own per input, and it is a crash of the worker process that makes the
// coordinator keep the input that caused it (under testdata/fuzz). Use it
// first in a fuzz function: defer fuzztest.Watchdog(t, 30*time.Second)().
func Watchdog(t testing.TB, d time.Duration) (stop func()) {
	name := t.Name()
	timer := time.AfterFunc(d, func() {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		fmt.Fprintf(os.Stderr, "%s: one input ran for more than %s\n%s\n", name, d, buf)
		panic(name + ": one input ran for more than " + d.String())
	})
	return func() { timer.Stop() }
}
