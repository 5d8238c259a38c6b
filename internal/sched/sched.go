// Package sched tells the kernel how to schedule the relay's own
// processes.
//
// The helper and the server are filters between git processes: they read
// a pack from one, seal or open it, and write it to the next. They wake up
// thousands of times a transfer (a pipe or a socket has data, a goroutine
// hands a chunk to another, the Go runtime's monitor thread polls every
// 20 µs while the process is busy), and under the kernel's default policy
// each of those wake-ups may preempt the git that is doing the real work
// beside them: the index-pack of a clone, upstream's index-pack of a push.
// SCHED_BATCH takes that right away from the relay's threads. They still
// get their full share of CPU, at once when a CPU is idle, otherwise when
// the running task's slice ends; what they no longer do is cut into it.
package sched

// Batch gives every thread of this process the SCHED_BATCH policy, keeping
// its nice value. Threads started later, and commands this process runs,
// inherit it. A kernel that refuses it only costs speed, so callers may
// ignore the error.
func Batch() error { return batch() }
