package gitx

import (
	"os"

	"golang.org/x/sys/unix"
)

// pipeSize is the buffer asked for a pipe that carries a pack or a
// bundle: 1 MiB, Linux's default most for an unprivileged process, rather
// than 64 KiB. The writer then blocks, and the reader wakes, a sixteenth
// as often.
const pipeSize = 1 << 20

// WidenPipe asks for a larger buffer for the pipe f; a refusal only costs
// speed.
func WidenPipe(f *os.File) {
	if rc, err := f.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) {
			_, _ = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, pipeSize)
		})
	}
}
