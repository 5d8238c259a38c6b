package gitx

import (
	"io"
	"os"
)

// CopyInPieces copies r to w in reads and writes of up to size bytes.
// Where w is a pipe to git, each write wakes its reader: io.Copy would
// hand r to the file's ReadFrom (or w to r's WriteTo), which moves 32 KiB
// at a time whatever the size of what comes.
func CopyInPieces(w io.Writer, r io.Reader, size int) (int64, error) {
	return io.CopyBuffer(onlyWriter{w}, onlyReader{r}, make([]byte, size))
}

// onlyWriter and onlyReader hide ReaderFrom and WriterTo, so that
// io.CopyBuffer uses the buffer it is given.
type onlyWriter struct{ io.Writer }
type onlyReader struct{ io.Reader }

// BlockingPipe makes reads and writes of the pipe f plain blocking system
// calls rather than the runtime poller's. git reads and writes pipes a
// few KiB at a time (index-pack reads its input 4 KiB at a time), and
// through the poller each of those woke a goroutine: a write that finds
// the pipe full fails, parks, waits in epoll_wait and is scheduled again.
// For one 25 MiB push that was some 5,600 writes of 4 KiB, 4,400 failed
// ones and as many trips through the scheduler in the relay server,
// where git's own writer sleeps in one write until there is room.
//
// f's deadlines stop working, and a goroutine blocked on f is freed by
// the other end closing (the child exiting), not by closing f.
func BlockingPipe(f *os.File) {
	_ = f.Fd() // which puts f in blocking mode
}

// pipeInput is InputPipe's fallback: a widened pipe with a blocking
// write end.
func pipeInput() (child, ours *os.File, err error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	WidenPipe(w)
	BlockingPipe(w)
	return r, w, nil
}
