package gitx

import "io"

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
