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

// inputBuffer is the send buffer asked for InputPipe's end: as much as
// Linux lets an unprivileged process have (net.core.wmem_max, 208 KiB by
// default, which the kernel doubles).
const inputBuffer = 4 << 20

// InputPipe returns the two ends of a channel to a child's stdin: the
// child's, to pass as its Stdin and close once it has started, and ours,
// to write and close. It is a Unix socket pair rather than a pipe. git
// reads its input a few KiB at a time (index-pack 4 KiB), and a writer
// that is faster than that sleeps on a full channel: a pipe wakes it each
// time the reader frees a page, to write one page, while a socket wakes
// it only once the reader has taken three quarters of its buffer. Fed
// 25 MiB in 64 KiB writes, a reader of 4 KiB reads (dd) woke its writer
// about 2,200 times through a pipe and under 100 through a socket; the
// writer's CPU fell from 25-45 ms to 7-11 ms and the reader's from 51-55
// to 35 ms (each wake-up is a trip through the scheduler, dear on a
// virtual machine). Our end is blocking; where a socket pair cannot be
// made, it is a widened pipe.
func InputPipe() (child, ours *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return pipeInput()
	}
	_ = unix.SetsockoptInt(fds[1], unix.SOL_SOCKET, unix.SO_SNDBUF, inputBuffer)
	// One way only: the child's end can't write back, ours can't read.
	_ = unix.Shutdown(fds[0], unix.SHUT_WR)
	_ = unix.Shutdown(fds[1], unix.SHUT_RD)
	return os.NewFile(uintptr(fds[0]), "|0"), os.NewFile(uintptr(fds[1]), "|1"), nil
}
