package mem

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// populate asks for huge pages for b and faults its pages in with one
// system call; a kernel that refuses either only costs the faults.
func populate(b []byte) {
	const page = 4096
	off := int((page - uintptr(unsafe.Pointer(unsafe.SliceData(b)))%page) % page)
	if len(b)-off < page {
		return
	}
	r := b[off : off+(len(b)-off)/page*page]
	_ = unix.Madvise(r, unix.MADV_HUGEPAGE)
	_ = unix.Madvise(r, unix.MADV_POPULATE_WRITE)
}
