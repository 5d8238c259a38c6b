// Package mem makes large buffers that are ready to use.
//
// A buffer of fresh memory costs a page fault for each 4 KiB the first
// time it is written, and the relay's buffers are written once each by
// a read from a pipe or a socket: on a virtual machine a fault can cost
// more than the copy it interrupts. On the kind of machine the
// benchmarks run on, writing 32 MiB of fresh memory one page at a time
// took 120 to 240 ms; asked for as huge pages and populated in one
// system call, 16 to 75 ms.
package mem

// populateFrom is the size from which Fresh populates a buffer in one
// go: below it, the faults are few.
const populateFrom = 1 << 20

// Fresh returns a zeroed slice of length 0 and capacity n whose pages are
// already in place, as far as the system allows (huge pages where it
// gives them). It is for buffers that are reused, and for programs that
// live briefly (git-remote-relay): the advice splits the heap's mappings.
func Fresh(n int) []byte {
	b := make([]byte, n)
	if n >= populateFrom {
		populate(b)
	}
	return b[:0]
}
