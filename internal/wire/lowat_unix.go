//go:build linux || darwin

package wire

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// notSentLowat is how many bytes a connection to the relay may hold
// queued in the kernel and not yet sent (TCP_NOTSENT_LOWAT). Without
// it, a body's write ends once the body is in the socket's buffer,
// which the kernel grows to megabytes: the next chunk's body then
// starts while the last one still waits to leave, and on a slow link
// the two share its rate, so both arrive late (see Request.Sent).
const notSentLowat = 128 << 10

func limitUnsent(_, _ string, c syscall.RawConn) error {
	return c.Control(func(fd uintptr) {
		// A kernel without the option only loses the precision.
		_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, notSentLowat)
	})
}
