package benchenv

import (
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A server's CPU is read before and after a command: it must count the
// git children the server ran and reaped.
func TestCPUTimeCountsReapedChildren(t *testing.T) {
	before, err := CPUTime(os.Getpid())
	require.NoError(t, err)
	cmd := exec.Command("sh", "-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done")
	require.NoError(t, cmd.Run())
	child := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	after, err := CPUTime(os.Getpid())
	require.NoError(t, err)
	require.Greater(t, child, 100*time.Millisecond, "the child should have burnt some CPU")
	require.InDelta(t, child.Seconds(), (after - before).Seconds(), 0.05, "the child's CPU, as /proc/self/stat counts it")
}
