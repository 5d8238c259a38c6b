// Package payload turns a bundle that git is writing into the chunks that
// get sealed, and back: it decides whether compression pays, cuts the
// payload into chunks as it comes, and reassembles chunks into a bundle
// whose size and hash match the signed totals. Both directions stream, so
// memory stays flat whatever the bundle's size.
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
