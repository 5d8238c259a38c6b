package helper

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/klauspost/compress/zstd"

	"github.com/git-relay/git-relay/internal/bundle"
	"github.com/git-relay/git-relay/internal/gitx"
	"github.com/git-relay/git-relay/internal/payload"
	"github.com/git-relay/git-relay/internal/wire"
)

// unpacked is what startUnpack's git index-pack made of a fetched bundle.
type unpacked struct {
	quarantine string // the object folder holding the new pack
	size       int64  // the bundle's size
	hash       string // and its hex SHA-256
	err        error
}

// startUnpack runs git index-pack on the bundle that stream carries, as
// its authenticated chunks land, into a quarantine object folder under
// dir: the repository's own objects serve as bases for a thin pack, but
// none of the new objects is visible to it until admitPack moves the pack
// in. The result comes on the channel once the payload has ended and git
// is done, or as soon as either fails.
func (h *Helper) startUnpack(ctx context.Context, dir string, stream io.Reader, compression string) (<-chan unpacked, error) {
	objects, err := h.objectDir(ctx)
	if err != nil {
		return nil, err
	}
	quarantine := filepath.Join(dir, "objects")
	if err := os.MkdirAll(filepath.Join(quarantine, "pack"), 0o755); err != nil {
		return nil, err
	}
	args := []string{"index-pack", "--stdin", "--fix-thin"}
	if h.fsckObjects() {
		args = append(args, "--strict")
	}
	git := gitx.Repo{GitDir: h.git.GitDir, Env: append(append([]string{}, h.git.Env...),
		"GIT_OBJECT_DIRECTORY="+quarantine, "GIT_ALTERNATE_OBJECT_DIRECTORIES="+objects)}
	out := make(chan unpacked, 1)
	go func() {
		u := unpacked{quarantine: quarantine}
		u.size, u.hash, u.err = h.unpack(ctx, git, args, stream, compression)
		out <- u
	}()
	return out, nil
}

// unpack decompresses the payload if need be, hashes the bundle, checks
// its header and prerequisites, and feeds its pack to git.
func (h *Helper) unpack(ctx context.Context, git gitx.Repo, args []string, stream io.Reader, compression string) (int64, string, error) {
	var in io.Reader = stream
	if compression == wire.CompressZstd {
		dec, err := zstd.NewReader(stream, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(64<<20))
		if err != nil {
			return 0, "", err
		}
		defer dec.Close()
		in = dec
	}
	sum := sha256.New()
	counted := &payload.Counter{R: io.TeeReader(in, sum)}
	hdr, pack, err := bundle.Split(counted)
	if err != nil {
		return 0, "", fmt.Errorf("fetch from the relay: %w", err)
	}
	if err := h.havePrereqs(ctx, hdr); err != nil {
		return 0, "", err
	}
	c := git.Command(ctx, args...)
	c.Stdin = pack
	c.Stdout = io.Discard
	if err := c.Run(); err != nil {
		return 0, "", fmt.Errorf("unpack the fetched bundle: %w", err)
	}
	// index-pack stops at the pack's end; anything after it is not a
	// bundle git wrote, and the hash must cover it all.
	if n, _ := io.Copy(io.Discard, counted); n > 0 {
		return 0, "", errors.New("fetch from the relay: the bundle has bytes after its pack")
	}
	return counted.N, hex.EncodeToString(sum.Sum(nil)), nil
}

// havePrereqs checks that the repository has every object the bundle
// builds on, as git bundle unbundle does.
func (h *Helper) havePrereqs(ctx context.Context, hdr *bundle.Header) error {
	if len(hdr.Prereqs) == 0 {
		return nil
	}
	var ids strings.Builder
	for _, p := range hdr.Prereqs {
		ids.WriteString(p.OID + "\n")
	}
	out, err := h.git.RunInput(ctx, strings.NewReader(ids.String()), "cat-file", "--batch-check=%(objectname) %(objecttype)")
	if err != nil {
		return err
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.HasSuffix(line, " missing") {
			return fmt.Errorf("fetch from the relay: the bundle needs %s, which this repository lacks", strings.Fields(line)[0])
		}
	}
	return nil
}

// admitPack moves the quarantined pack into the repository: the .pack
// first and the .idx last, as git does, since the index is what makes a
// pack visible.
func (h *Helper) admitPack(ctx context.Context, quarantine string) error {
	objects, err := h.objectDir(ctx)
	if err != nil {
		return err
	}
	files, err := filepath.Glob(filepath.Join(quarantine, "pack", "pack-*"))
	if err != nil {
		return err
	}
	rank := func(name string) int {
		switch filepath.Ext(name) {
		case ".pack":
			return 0
		case ".idx":
			return 2
		}
		return 1
	}
	sort.SliceStable(files, func(a, b int) bool { return rank(files[a]) < rank(files[b]) })
	for _, f := range files {
		dst := filepath.Join(objects, "pack", filepath.Base(f))
		if _, err := os.Stat(dst); err == nil {
			continue // the same pack, by name, is there already
		}
		if err := os.Rename(f, dst); err != nil {
			return fmt.Errorf("move the fetched pack into the repository: %w", err)
		}
	}
	return nil
}

// objectDir is the repository's object folder.
func (h *Helper) objectDir(ctx context.Context) (string, error) {
	if h.objects == "" {
		dir, err := h.git.Run(ctx, "rev-parse", "--git-path", "objects")
		if err != nil {
			return "", err
		}
		if !filepath.IsAbs(dir) {
			// Relative to the working folder, which git and we share.
			if dir, err = filepath.Abs(dir); err != nil {
				return "", err
			}
		}
		h.objects = dir
	}
	return h.objects, nil
}

// fsckObjects says whether the user asked git to check fetched objects.
func (h *Helper) fsckObjects() bool {
	for _, k := range []string{"fetch.fsckobjects", "transfer.fsckobjects"} {
		if v := strings.ToLower(h.config[k]); v == "true" || v == "yes" || v == "on" || v == "1" {
			return true
		}
	}
	return false
}
