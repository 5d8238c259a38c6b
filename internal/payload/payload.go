// Package payload turns a bundle file into the bytes that get sealed, and
// back: it decides whether compression pays, and it reassembles sealed
// chunks into a bundle whose size and hash match the signed manifest. Both
// directions stream, so memory stays flat whatever the bundle's size.
package payload

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/klauspost/compress/zstd"

	"github.com/git-relay/git-relay/internal/seal"
	"github.com/git-relay/git-relay/internal/wire"
)

// minSaving is the fraction compression must save to be used. A bundle's
// pack is already zlib-compressed object by object, so zstd usually saves
// well under 1% and costs CPU on both ends; it pays for ref-heavy or
// loosely packed bundles only.
const minSaving = 0.05

// Payload is a prepared bundle.
type Payload struct {
	Path        string // the file to seal: the bundle itself or its compressed copy
	Compression string
	BundleSize  int64
	BundleHash  string
	PayloadSize int64
	tmp         string
}

// Close removes the compressed copy, if one was made.
func (p *Payload) Close() error {
	if p.tmp != "" {
		return os.Remove(p.tmp)
	}
	return nil
}

// sampleSize is how much of a bundle is compressed to decide whether
// compressing all of it pays.
const sampleSize = 4 << 20

// Prepare hashes the bundle and compresses it into tmpDir when a sample
// shows that compression saves at least minSaving. Most pushes are a pack
// of zlib-compressed objects, so the sample usually says no and the
// bundle is sealed as it is.
func Prepare(bundlePath, tmpDir string) (*Payload, error) {
	in, err := os.Open(bundlePath)
	if err != nil {
		return nil, err
	}
	defer in.Close()
	h := sha256.New()
	n, err := io.Copy(h, in)
	if err != nil {
		return nil, fmt.Errorf("hash bundle: %w", err)
	}
	return decide(in, bundlePath, n, hex.EncodeToString(h.Sum(nil)), tmpDir)
}

// Spool writes the bundle that r streams (git bundle create's output) to
// bundlePath, hashing it on the way, and then prepares it as Prepare does.
// Hashing while git writes saves reading the bundle a second time.
func Spool(r io.Reader, bundlePath, tmpDir string) (*Payload, error) {
	f, err := os.OpenFile(bundlePath, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), r)
	if err != nil {
		return nil, fmt.Errorf("write bundle: %w", err)
	}
	return decide(f, bundlePath, n, hex.EncodeToString(h.Sum(nil)), tmpDir)
}

func decide(in *os.File, bundlePath string, n int64, hash, tmpDir string) (*Payload, error) {
	p := &Payload{Path: bundlePath, Compression: wire.CompressNone, BundleSize: n, BundleHash: hash, PayloadSize: n}
	sample := min(n, sampleSize)
	if sample == 0 {
		return p, nil
	}
	var cw countingWriter
	if err := compress(&cw, io.NewSectionReader(in, 0, sample)); err != nil {
		return nil, err
	}
	if float64(cw.n) > float64(sample)*(1-minSaving) {
		return p, nil
	}
	out, err := os.CreateTemp(tmpDir, "payload-*.zst")
	if err != nil {
		return nil, err
	}
	cw = countingWriter{w: out}
	err = compress(&cw, io.NewSectionReader(in, 0, n))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(out.Name())
		return nil, err
	}
	if float64(cw.n) > float64(n)*(1-minSaving) {
		os.Remove(out.Name())
		return p, nil
	}
	p.Path, p.Compression, p.PayloadSize, p.tmp = out.Name(), wire.CompressZstd, cw.n, out.Name()
	return p, nil
}

func compress(w io.Writer, r io.Reader) error {
	enc, err := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1), zstd.WithLowerEncoderMem(true))
	if err != nil {
		return err
	}
	if _, err := io.Copy(enc, r); err != nil {
		enc.Close()
		return fmt.Errorf("compress bundle: %w", err)
	}
	return enc.Close()
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	if c.w == nil {
		return len(p), nil
	}
	return c.w.Write(p)
}

// ChunkSize is the payload bytes per chunk for a body limit: the sealed
// chunk is the whole body, so only the AEAD tag is added.
func ChunkSize(maxBody int64) int {
	return int(maxBody) - seal.Overhead
}

// Assemble opens chunks 0..count-1 in order (get returns each sealed
// chunk; the last must open as the final one), decompresses them, and
// writes the bundle to out, checking its size and SHA-256. A chunk that
// fails authentication stops it with an error naming the chunk. The caller
// must not use what was written to out unless Assemble returns nil.
func Assemble(st *seal.Stream, get func(i uint32) ([]byte, error), count uint32, compression string, size int64, hash string, out io.Writer) error {
	h := sha256.New()
	sink := io.MultiWriter(out, h)
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		var r io.Reader = pr
		if compression == wire.CompressZstd {
			dec, err := zstd.NewReader(pr, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(64<<20))
			if err != nil {
				pr.CloseWithError(err)
				done <- err
				return
			}
			defer dec.Close()
			r = dec
		} else if compression != wire.CompressNone {
			err := fmt.Errorf("unknown compression %q", compression)
			pr.CloseWithError(err)
			done <- err
			return
		}
		// One byte past the declared size catches a payload that grows
		// beyond what the manifest says (a decompression bomb included).
		n, err := io.Copy(sink, io.LimitReader(r, size+1))
		if err == nil && n != size {
			err = fmt.Errorf("bundle is %d bytes, the manifest says %d", n, size)
		}
		if err == nil {
			// Drain: trailing bytes after the declared size are an error too.
			if m, _ := io.Copy(io.Discard, r); m > 0 {
				err = errors.New("payload has trailing bytes")
			}
		}
		pr.CloseWithError(err)
		done <- err
	}()
	var buf []byte
	for i := uint32(0); i < count; i++ {
		ct, err := get(i)
		if err != nil {
			pw.CloseWithError(err)
			<-done
			return fmt.Errorf("chunk %d: %w", i, err)
		}
		buf, err = st.Open(buf[:0], i, i == count-1, ct)
		if err != nil {
			pw.CloseWithError(err)
			<-done
			return err
		}
		if _, err := pw.Write(buf); err != nil {
			<-done
			return fmt.Errorf("assemble bundle: %w", err)
		}
	}
	pw.Close()
	if err := <-done; err != nil {
		return fmt.Errorf("assemble bundle: %w", err)
	}
	if hex.EncodeToString(h.Sum(nil)) != hash {
		return errors.New("assembled bundle does not match the manifest's hash")
	}
	return nil
}

// Finish checks a payload whose chunks were opened one by one into the file
// at payloadPath (each authenticated, in any order) and returns the path of
// the bundle: the payload itself, or its decompressed copy at bundlePath.
// The bundle's size and SHA-256 must match the manifest.
func Finish(payloadPath, compression string, payloadSize, size int64, hash, bundlePath string) (string, error) {
	in, err := os.Open(payloadPath)
	if err != nil {
		return "", err
	}
	defer in.Close()
	if fi, err := in.Stat(); err != nil || fi.Size() != payloadSize {
		return "", errors.New("payload has the wrong size")
	}
	h := sha256.New()
	out := payloadPath
	var n int64
	switch compression {
	case wire.CompressNone:
		n, err = io.Copy(h, in)
	case wire.CompressZstd:
		dec, derr := zstd.NewReader(in, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(64<<20))
		if derr != nil {
			return "", derr
		}
		defer dec.Close()
		f, ferr := os.Create(bundlePath)
		if ferr != nil {
			return "", ferr
		}
		defer f.Close()
		n, err = io.Copy(io.MultiWriter(f, h), io.LimitReader(dec, size+1))
		out = bundlePath
	default:
		return "", fmt.Errorf("unknown compression %q", compression)
	}
	if err != nil {
		return "", fmt.Errorf("read payload: %w", err)
	}
	if n != size {
		return "", fmt.Errorf("bundle is %d bytes, the manifest says %d", n, size)
	}
	if hex.EncodeToString(h.Sum(nil)) != hash {
		return "", errors.New("assembled bundle does not match the manifest's hash")
	}
	return out, nil
}
