// Package bundle owns the git bundle file format (v2 and v3): it reads and
// checks the text header (capabilities, prerequisites, references) and hands
// out the packfile that follows it as a stream, so that the relay can feed a
// received bundle's pack straight into upstream's receive-pack without
// unpacking and repacking it.
//
// The format is git's Documentation/gitformat-bundle.txt:
//
//	bundle       = signature *capability *prerequisite *reference LF pack
//	signature    = "# v2 git bundle" LF / "# v3 git bundle" LF
//	capability   = "@" key ["=" value] LF          (v3 only)
//	prerequisite = "-" obj-id [SP comment] LF
//	reference    = obj-id SP refname LF
//
// The reader is stricter than git where strictness costs nothing: object ids
// are lowercase 40-digit SHA-1, reference names follow git-check-ref-format,
// capabilities precede prerequisites which precede references, and lines
// and entry counts are bounded so that a hostile header cannot exhaust
// memory.
package bundle

import (
	"bufio"
	"bytes"
	"crypto/sha1"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/git-relay/git-relay/internal/gitx"
)

const (
	// MaxLineLen bounds one header line, newline included. Git limits ref
	// names to a path (4096 bytes); a prerequisite's comment is a commit
	// subject, which git prints whole, so leave room for a long one.
	MaxLineLen = 16 << 10
	// MaxEntries bounds prerequisites plus references. Prerequisites are
	// upstream's tips, so a repository with many tags needs many.
	MaxEntries = 1 << 17
	// MaxHeaderLen bounds the whole header.
	MaxHeaderLen = 64 << 20

	hexLen = 40 // a SHA-1 object id in hex

	sigV2 = "# v2 git bundle"
	sigV3 = "# v3 git bundle"
)

// ErrInvalid is wrapped by every error about a malformed bundle.
var ErrInvalid = errors.New("invalid git bundle")

// Header is a parsed bundle header.
type Header struct {
	// Version is 2 or 3.
	Version int
	// Capabilities holds the v3 "@key[=value]" lines (empty for v2).
	Capabilities map[string]string
	// Prereqs are the commits the receiver must already have.
	Prereqs []Prereq
	// Refs are the references the bundle carries, in file order.
	Refs []Ref
	// Len is the number of bytes before the pack: the header including its
	// terminating blank line.
	Len int64
}

// Prereq is one "-<oid> <comment>" line.
type Prereq struct {
	OID     string
	Comment string
}

// Ref is one "<oid> <refname>" line.
type Ref struct {
	OID  string
	Name string
}

// ReadHeader reads a bundle header from r and consumes exactly Header.Len
// bytes of it, so that what r yields next is the pack. When r is an
// io.ByteReader (a *bufio.Reader, say) it is read through that interface;
// otherwise it is read one byte at a time, which is slow for large headers
// but never reads past the header. To read the pack of a bundle file, use
// OpenPack, or Split on a stream.
func ReadHeader(r io.Reader) (*Header, error) {
	br, ok := r.(io.ByteReader)
	if !ok {
		br = byteReader{r}
	}
	return readHeader(br)
}

// Split reads the header from r and returns it with a reader of the pack
// that follows, for bundles that arrive as a stream rather than a file.
func Split(r io.Reader) (*Header, io.Reader, error) {
	br, ok := r.(*bufio.Reader)
	if !ok {
		br = bufio.NewReaderSize(r, 64<<10)
	}
	h, err := readHeader(br)
	if err != nil {
		return nil, nil, err
	}
	return h, br, nil
}

// OpenPack opens the bundle file at path, checks its header and the pack
// signature that follows it, and returns the header and the pack bytes
// (from "PACK" to the end of the file, trailer included) as a stream
// straight from the file. The caller closes the stream.
func OpenPack(path string) (*Header, io.ReadCloser, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("open bundle: %w", err)
	}
	h, err := readHeader(bufio.NewReaderSize(f, 64<<10))
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("read bundle %q: %w", path, err)
	}
	if err := checkPack(f, h.Len); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("read bundle %q: %w", path, err)
	}
	if _, err := f.Seek(h.Len, io.SeekStart); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("read bundle %q: %w", path, err)
	}
	// The *os.File itself is returned (not a wrapper) so that io.Copy into
	// a pipe or socket can use the kernel's zero-copy paths.
	return h, f, nil
}

// checkPack verifies that a plausible pack starts at off: the signature, a
// supported version, and room for the 20-byte trailer.
func checkPack(f *os.File, off int64) error {
	var hdr [PackHeaderLen]byte
	if _, err := f.ReadAt(hdr[:], off); err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("%w: the pack after the header is missing or truncated", ErrInvalid)
		}
		return err
	}
	if _, err := PackObjects(hdr[:]); err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Size()-off < int64(len(hdr))+sha1.Size {
		return fmt.Errorf("%w: the pack after the header is truncated", ErrInvalid)
	}
	return nil
}

// PackHeaderLen is the length of a pack's header: "PACK", its version
// and its object count, 4 bytes each.
const PackHeaderLen = 12

// PackObjects reads a pack's header and returns how many objects the pack
// says it holds.
func PackObjects(hdr []byte) (uint32, error) {
	if len(hdr) < PackHeaderLen || string(hdr[:4]) != "PACK" {
		return 0, fmt.Errorf("%w: no pack after the header (found %q)", ErrInvalid, hdr[:min(4, len(hdr))])
	}
	if v := binary.BigEndian.Uint32(hdr[4:8]); v != 2 && v != 3 {
		return 0, fmt.Errorf("%w: unsupported pack version %d", ErrInvalid, v)
	}
	return binary.BigEndian.Uint32(hdr[8:12]), nil
}

// AppendV2 appends a v2 bundle header to b: the prerequisites (without
// comments), the references, and the blank line that ends it.
func AppendV2(b []byte, prereqs []string, refs []Ref) []byte {
	b = append(b, sigV2+"\n"...)
	for _, id := range prereqs {
		b = append(b, "-"+id+"\n"...)
	}
	for _, r := range refs {
		b = append(b, r.OID+" "+r.Name+"\n"...)
	}
	return append(b, '\n')
}

var emptyPack = func() []byte {
	p := []byte{'P', 'A', 'C', 'K', 0, 0, 0, 2, 0, 0, 0, 0}
	sum := sha1.Sum(p)
	return append(p, sum[:]...)
}()

// EmptyPack returns a valid pack with no objects: what receive-pack needs
// after commands that only move refs to objects it already has.
func EmptyPack() []byte {
	return bytes.Clone(emptyPack)
}

// byteReader reads one byte per Read call, so that nothing past the
// header is consumed from a reader without a ReadByte of its own.
type byteReader struct{ r io.Reader }

func (b byteReader) ReadByte() (byte, error) {
	var p [1]byte
	for {
		n, err := b.r.Read(p[:])
		if n == 1 {
			return p[0], nil
		}
		if err != nil {
			return 0, err
		}
	}
}

func readHeader(br io.ByteReader) (*Header, error) {
	h := &Header{Capabilities: map[string]string{}}
	lineNo := 0
	// next returns the next line without its newline. A line must end in
	// "\n": the header is text followed by binary pack data, so EOF in the
	// middle of it means a truncated file.
	var buf []byte
	next := func(maxLen int) (string, error) {
		lineNo++
		buf = buf[:0]
		for {
			c, err := br.ReadByte()
			if err != nil {
				if errors.Is(err, io.EOF) {
					return "", fmt.Errorf("%w: header ends before its blank line (line %d)", ErrInvalid, lineNo)
				}
				return "", fmt.Errorf("read bundle header: %w", err)
			}
			h.Len++
			if h.Len > MaxHeaderLen {
				return "", fmt.Errorf("%w: header longer than %d bytes", ErrInvalid, MaxHeaderLen)
			}
			if c == '\n' {
				return string(buf), nil
			}
			if len(buf)+1 >= maxLen {
				return "", fmt.Errorf("%w: line %d longer than %d bytes", ErrInvalid, lineNo, maxLen)
			}
			buf = append(buf, c)
		}
	}

	// The signature line is read with a tight limit, so that a file that
	// is not a bundle at all gets the right complaint quickly.
	sig, err := next(len(sigV2) + 2)
	if err != nil && errors.Is(err, ErrInvalid) {
		return nil, fmt.Errorf("%w: not a v2 or v3 git bundle (it does not start with %q)", ErrInvalid, sigV2)
	}
	if err != nil {
		return nil, err
	}
	switch sig {
	case sigV2:
		h.Version = 2
	case sigV3:
		h.Version = 3
	default:
		return nil, fmt.Errorf("%w: not a v2 or v3 git bundle (first line %.40q)", ErrInvalid, sig)
	}

	// Sections must come in order: capabilities, prerequisites, references.
	const (
		inCaps = iota
		inPrereqs
		inRefs
	)
	section := inCaps
	seen := map[string]bool{}
	for {
		line, err := next(MaxLineLen)
		if err != nil {
			return nil, err
		}
		if line == "" {
			break
		}
		if len(h.Prereqs)+len(h.Refs) >= MaxEntries {
			return nil, fmt.Errorf("%w: more than %d prerequisites and references", ErrInvalid, MaxEntries)
		}
		if strings.ContainsAny(line, "\x00\r") {
			return nil, fmt.Errorf("%w: line %d contains a NUL or carriage return", ErrInvalid, lineNo)
		}
		switch {
		case line[0] == '@':
			if h.Version < 3 {
				return nil, fmt.Errorf("%w: line %d: capability %.60q in a v2 bundle", ErrInvalid, lineNo, line)
			}
			if section != inCaps {
				return nil, fmt.Errorf("%w: line %d: capability %.60q after prerequisites or references", ErrInvalid, lineNo, line)
			}
			key, value, err := parseCapability(line[1:])
			if err != nil {
				return nil, fmt.Errorf("%w: line %d: %v", ErrInvalid, lineNo, err)
			}
			if _, dup := h.Capabilities[key]; dup {
				return nil, fmt.Errorf("%w: line %d: capability %q given twice", ErrInvalid, lineNo, key)
			}
			h.Capabilities[key] = value
		case line[0] == '-':
			if section == inRefs {
				return nil, fmt.Errorf("%w: line %d: prerequisite after references", ErrInvalid, lineNo)
			}
			section = inPrereqs
			oid, comment, _ := strings.Cut(line[1:], " ")
			if !validOID(oid) {
				return nil, fmt.Errorf("%w: line %d: prerequisite %.60q is not a 40-digit lowercase hex object id", ErrInvalid, lineNo, oid)
			}
			h.Prereqs = append(h.Prereqs, Prereq{OID: oid, Comment: comment})
		default:
			section = inRefs
			oid, name, ok := strings.Cut(line, " ")
			if !ok {
				return nil, fmt.Errorf("%w: line %d: %.60q is not \"<object id> <refname>\"", ErrInvalid, lineNo, line)
			}
			if !validOID(oid) {
				return nil, fmt.Errorf("%w: line %d: %.60q is not a 40-digit lowercase hex object id", ErrInvalid, lineNo, oid)
			}
			if !validRefName(name) {
				return nil, fmt.Errorf("%w: line %d: %.200q is not a valid reference name", ErrInvalid, lineNo, name)
			}
			if seen[name] {
				return nil, fmt.Errorf("%w: line %d: reference %q listed twice", ErrInvalid, lineNo, name)
			}
			seen[name] = true
			h.Refs = append(h.Refs, Ref{OID: oid, Name: name})
		}
	}
	if len(h.Refs) == 0 {
		return nil, fmt.Errorf("%w: the header lists no references", ErrInvalid)
	}
	return h, nil
}

// parseCapability checks one v3 capability. Git itself refuses a bundle
// with a capability it does not know, and so do we: "filter" (a partial
// bundle) cannot be pushed, and any object format but SHA-1 is out of
// scope for the relay.
func parseCapability(s string) (key, value string, err error) {
	key, value, _ = strings.Cut(s, "=")
	switch key {
	case "object-format":
		if value != "sha1" {
			return "", "", fmt.Errorf("object format %q is not supported (only sha1)", value)
		}
	case "filter":
		return "", "", fmt.Errorf("filtered (partial) bundles are not supported")
	default:
		return "", "", fmt.Errorf("unknown capability %.60q", key)
	}
	return key, value, nil
}

func validOID(s string) bool { return gitx.ValidOID(s) }

// validRefName applies git-check-ref-format's rules (without
// --allow-onelevel), accepting HEAD too, which git bundle writes when
// asked to bundle HEAD.
func validRefName(name string) bool { return name == "HEAD" || gitx.ValidRefName(name) }
