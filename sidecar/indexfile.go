package sidecar

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// indexEntry is what the snapshot needs of one entry of its own index:
// enough of git's cached stat data to tell a file that certainly did not
// change from one that may have.
type indexEntry struct {
	ctimeS, ctimeNS uint32
	mtimeS, mtimeNS uint32
	ino, uid, gid   uint32
	size            uint32
	mode            uint32
	rawID           string // the object id's bytes (not hex)
	seen            bool   // set by the snapshot for paths still visible
}

// id is the entry's object id in hex.
func (e *indexEntry) id() string { return hex.EncodeToString([]byte(e.rawID)) }

// readIndex reads the entries of an index file in git's version 2, 3 or
// 4 format (the snapshot's own index is written as version 4, whose
// prefix-compressed paths make it several times smaller to read, write
// and checksum). It returns the entries by path and the index file's
// modification time, which git compares file times against to find
// racily clean entries.
//
// Reading the index ourselves lets a sync skip handing git every path of a
// large tree when almost nothing changed; anything unexpected is an error
// and the caller falls back to letting git look at every path.
func readIndex(path string, hashLen int) (map[string]*indexEntry, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	br := bufio.NewReaderSize(f, 256<<10)
	var hdr [12]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return nil, 0, fmt.Errorf("read index header: %w", err)
	}
	if string(hdr[:4]) != "DIRC" {
		return nil, 0, errors.New("not an index file")
	}
	version := binary.BigEndian.Uint32(hdr[4:8])
	if version < 2 || version > 4 {
		return nil, 0, fmt.Errorf("index version %d is not read here", version)
	}
	var prev []byte // version 4: the previous entry's path
	n := binary.BigEndian.Uint32(hdr[8:12])
	entries := make(map[string]*indexEntry, n)
	fixed := 40 + hashLen + 2
	buf := make([]byte, fixed+2)
	for i := uint32(0); i < n; i++ {
		if _, err := io.ReadFull(br, buf[:fixed]); err != nil {
			return nil, 0, fmt.Errorf("read index entry %d: %w", i, err)
		}
		u := func(off int) uint32 { return binary.BigEndian.Uint32(buf[off : off+4]) }
		e := &indexEntry{
			ctimeS: u(0), ctimeNS: u(4), mtimeS: u(8), mtimeNS: u(12),
			ino: u(20), mode: u(24), uid: u(28), gid: u(32), size: u(36),
			rawID: string(buf[40 : 40+hashLen]),
		}
		flags := binary.BigEndian.Uint16(buf[40+hashLen : fixed])
		length := fixed
		if flags&0x4000 != 0 { // extended flags
			if version < 3 {
				return nil, 0, errors.New("extended flags in a version 2 index")
			}
			if _, err := io.ReadFull(br, buf[fixed:fixed+2]); err != nil {
				return nil, 0, fmt.Errorf("read index entry %d: %w", i, err)
			}
			length += 2
		}
		var path string
		if version == 4 {
			// The path is the previous one less its last N bytes,
			// then the NUL-terminated rest; no padding.
			strip, err := readGitVarint(br)
			if err != nil || strip > uint64(len(prev)) {
				return nil, 0, fmt.Errorf("read index entry %d: bad path prefix", i)
			}
			rest, err := br.ReadBytes(0)
			if err != nil {
				return nil, 0, fmt.Errorf("read index entry %d: %w", i, err)
			}
			prev = append(prev[:uint64(len(prev))-strip], rest[:len(rest)-1]...)
			path = string(prev)
		} else {
			name, err := br.ReadBytes(0)
			if err != nil {
				return nil, 0, fmt.Errorf("read index entry %d: %w", i, err)
			}
			length += len(name) // with its NUL
			// Entries are padded with 1 to 8 NULs to a multiple of 8;
			// one NUL was read with the name.
			if pad := (8 - length%8) % 8; pad > 0 {
				if _, err := br.Discard(pad); err != nil {
					return nil, 0, fmt.Errorf("read index entry %d: %w", i, err)
				}
			}
			path = string(name[:len(name)-1])
		}
		if stage := (flags >> 12) & 3; stage != 0 {
			continue // never in our own index; ignore rather than guess
		}
		entries[path] = e
	}
	return entries, fi.ModTime().UnixNano(), nil
}

// readGitVarint reads git's "offset varint" (varint.c), which version 4
// indexes use for the length of the path prefix to drop: big-endian
// groups of 7 bits, each continuation adding one before shifting.
func readGitVarint(br *bufio.Reader) (uint64, error) {
	c, err := br.ReadByte()
	if err != nil {
		return 0, err
	}
	v := uint64(c & 127)
	for c&128 != 0 {
		v++
		if v>>57 != 0 {
			return 0, errors.New("varint overflow")
		}
		if c, err = br.ReadByte(); err != nil {
			return 0, err
		}
		v = v<<7 + uint64(c&127)
	}
	return v, nil
}

// fileStat is the part of lstat that git caches in the index.
type fileStat struct {
	mode            uint32 // git's canonical mode: 100644, 100755, 120000
	size            int64
	ctimeS, ctimeNS uint32
	mtimeS, mtimeNS uint32
	mtime           int64 // nanoseconds, for comparisons across the whole range
	ino, uid, gid   uint32
}

func statOf(fi os.FileInfo) (fileStat, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileStat{}, false
	}
	var mode uint32
	switch {
	case fi.Mode()&os.ModeSymlink != 0:
		mode = 0o120000
	case fi.Mode().IsRegular():
		mode = 0o100644
		if fi.Mode()&0o100 != 0 {
			mode = 0o100755
		}
	default:
		return fileStat{}, false
	}
	return fileStat{
		mode: mode, size: fi.Size(),
		ctimeS: uint32(st.Ctim.Sec), ctimeNS: uint32(st.Ctim.Nsec),
		mtimeS: uint32(st.Mtim.Sec), mtimeNS: uint32(st.Mtim.Nsec),
		mtime: st.Mtim.Sec*1e9 + st.Mtim.Nsec,
		ino:   uint32(st.Ino), uid: st.Uid, gid: st.Gid,
	}, true
}

// statOfSys is statOf from a stat(2) result.
func statOfSys(st *unix.Stat_t) (fileStat, bool) {
	var mode uint32
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFLNK:
		mode = 0o120000
	case unix.S_IFREG:
		mode = 0o100644
		if st.Mode&0o100 != 0 {
			mode = 0o100755
		}
	default:
		return fileStat{}, false
	}
	return fileStat{
		mode: mode, size: st.Size,
		ctimeS: uint32(st.Ctim.Sec), ctimeNS: uint32(st.Ctim.Nsec),
		mtimeS: uint32(st.Mtim.Sec), mtimeNS: uint32(st.Mtim.Nsec),
		mtime: st.Mtim.Sec*1e9 + st.Mtim.Nsec,
		ino:   uint32(st.Ino), uid: st.Uid, gid: st.Gid,
	}, true
}

// clean reports whether the cached entry certainly describes the file as
// it is: every field git caches is the same, and the entry is not racily
// clean (the file was not changed in the same instant as the index was
// written, which its times could not show). Anything else goes to git,
// which decides with its own rules; a false "changed" only costs a look.
func (e *indexEntry) clean(s fileStat, indexMtime int64) bool {
	return e.mode == s.mode && e.size == uint32(s.size) &&
		e.mtimeS == s.mtimeS && e.mtimeNS == s.mtimeNS &&
		e.ctimeS == s.ctimeS && e.ctimeNS == s.ctimeNS &&
		e.ino == s.ino && e.uid == s.uid && e.gid == s.gid &&
		s.mtime < indexMtime
}
