package sched

import (
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func policies(t *testing.T) map[int]uint32 {
	t.Helper()
	tids, err := threads()
	require.NoError(t, err)
	out := map[int]uint32{}
	for _, tid := range tids {
		if a, err := unix.SchedGetAttr(tid, 0); err == nil {
			out[tid] = a.Policy
		}
	}
	return out
}

// Every thread of the process, one started afterwards, and a command it
// runs are SCHED_BATCH, with the nice value they had.
func TestBatchCoversEveryThreadAndChild(t *testing.T) {
	nice, err := unix.Getpriority(unix.PRIO_PROCESS, 0)
	require.NoError(t, err)

	require.NoError(t, Batch())
	after := policies(t)
	require.NotEmpty(t, after)
	for tid, p := range after {
		require.Equal(t, uint32(unix.SCHED_BATCH), p, "thread %d", tid)
	}

	// A goroutine locked to a thread of its own makes the runtime start
	// one.
	tid := make(chan int)
	release := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		tid <- unix.Gettid()
		<-release
	}()
	fresh := <-tid
	a, err := unix.SchedGetAttr(fresh, 0)
	require.NoError(t, err)
	close(release)
	require.Equal(t, uint32(unix.SCHED_BATCH), a.Policy, "a thread started after Batch")

	// A command's policy: field 41 of its /proc/self/stat.
	out, err := exec.Command("cat", "/proc/self/stat").Output()
	require.NoError(t, err)
	fields := strings.Fields(string(out[strings.LastIndexByte(string(out), ')')+1:]))
	require.Greater(t, len(fields), 38)
	require.Equal(t, strconv.Itoa(unix.SCHED_BATCH), fields[38], "a command's policy")

	niceAfter, err := unix.Getpriority(unix.PRIO_PROCESS, 0)
	require.NoError(t, err)
	require.Equal(t, nice, niceAfter, "the nice value")
}
