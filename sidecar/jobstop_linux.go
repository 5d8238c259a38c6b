//go:build linux

package sidecar

import (
	"errors"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// cldStopped is si_code CLD_STOPPED: the child was stopped by a signal.
const cldStopped = 5

// followStops handles Ctrl-Z for a command that owns the terminal, as a
// shell does for a job: when it stops, the terminal comes back to our
// process group, which stops too (so the user's shell takes over); once
// we are continued (fg), the command gets the terminal back and is
// continued. It returns when the command exits; cmd.Wait reaps it.
func followStops(pid int, tty *os.File) {
	for {
		var info unix.Siginfo
		// WNOWAIT: look without reaping, so that cmd.Wait still can.
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WSTOPPED|unix.WNOWAIT, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || info.Code != cldStopped {
			return
		}
		// Take the stop notice off the queue (it is no exit).
		_ = unix.Waitid(unix.P_PID, pid, &info, unix.WSTOPPED, nil)
		takeTerminalBack(tty)
		_ = syscall.Kill(0, syscall.SIGTSTP)
		// Running again: continued by the shell, or never stopped
		// because nothing is there to take over (an orphaned group).
		_ = unix.IoctlSetPointerInt(int(tty.Fd()), unix.TIOCSPGRP, pid)
		_ = syscall.Kill(-pid, syscall.SIGCONT)
	}
}
