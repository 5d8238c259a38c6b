//go:build !linux

package sidecar

import "os"

// followStops is a no-op where waitid cannot look at a child without
// reaping it: Ctrl-Z then stops the command alone.
func followStops(pid int, tty *os.File) {}
