//go:build !linux

package gitx

import "os"

// WidenPipe does nothing here: pipes keep their size.
func WidenPipe(*os.File) {}

// InputPipe returns the ends of a widened, blocking pipe here (see the
// Linux version).
func InputPipe() (child, ours *os.File, err error) { return pipeInput() }
