package helper

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/git-relay/git-relay/internal/keyring"
	"github.com/git-relay/git-relay/internal/payload"
	"github.com/git-relay/git-relay/internal/seal"
	"github.com/git-relay/git-relay/internal/wire"
)

// fetch answers a batch of "fetch <id> <name>" lines: it asks the server
// for a bundle of the wanted objects minus what this repository has,
// downloads it in sealed chunks (each a signed response under the body
// limit), checks all of it, and unbundles it with git's own tools.
func (h *Helper) fetch(ctx context.Context, lines []string) error {
	seen := map[string]bool{}
	var wants []string
	for _, l := range lines {
		id, _, _ := strings.Cut(l, " ")
		if len(id) != 40 || seen[id] {
			continue
		}
		seen[id] = true
		if ok, _ := h.git.Ok(ctx, "cat-file", "-e", id); ok {
			continue
		}
		wants = append(wants, id)
	}
	if len(wants) == 0 {
		return nil
	}
	haves, err := h.haves(ctx)
	if err != nil {
		return err
	}
	req := wire.FetchRequest{Repo: h.repo, Wants: wants, Haves: haves, MaxBody: h.maxBdy}
	var sess wire.Session
	if _, err := h.client.Do(ctx, http.MethodPost, wire.PathFetch, nil, req, &sess); err != nil {
		return h.explain(err)
	}
	q := url.Values{"session": {sess.Session}}
	var st wire.FetchStatus
	delay := 50 * time.Millisecond
	h.ui.status("server: preparing bundle...")
	for {
		if _, err := h.client.Do(ctx, http.MethodGet, wire.PathFetchStatus, q, nil, &st); err != nil {
			return h.explain(err)
		}
		if st.Ready || st.Phase == "failed" {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		if delay < time.Second {
			delay = delay * 3 / 2
		}
	}
	if !st.Ready {
		return fmt.Errorf("the relay could not prepare the fetch: %s", st.Message)
	}
	var m wire.FetchManifest
	if err := json.Unmarshal(st.Manifest, &m); err != nil {
		return fmt.Errorf("decode fetch manifest: %w", err)
	}
	if m.Session != sess.Session || m.Repo != h.repo {
		return errors.New("the relay's fetch manifest is for another session")
	}
	if m.Chunks == 0 {
		h.ui.done("server: nothing to send.")
		return nil
	}
	return h.download(ctx, sess.Session, m, st.Manifest)
}

// haves lists the tips of every local ref; the server keeps those it
// knows as the bundle's prerequisites.
func (h *Helper) haves(ctx context.Context) ([]string, error) {
	out, err := h.git.Run(ctx, "for-each-ref", "--format=%(objectname)")
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var ids []string
	for _, id := range strings.Fields(out) {
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// download fetches the chunks into a folder under the git dir (so a
// download that fails can be told apart from a finished one), assembles
// the bundle once every chunk authenticated, and unbundles it.
func (h *Helper) download(ctx context.Context, session string, m wire.FetchManifest, raw []byte) error {
	salt, err := hex.DecodeString(m.Salt)
	if err != nil || len(salt) != 32 {
		return errors.New("bad salt in the relay's fetch manifest")
	}
	if m.ChunkSize <= 0 || int64(m.ChunkSize)+seal.Overhead > h.maxBdy || seal.Chunks(m.PayloadSize, m.ChunkSize) != m.Chunks {
		return errors.New("the relay's fetch manifest has inconsistent sizes")
	}
	st, err := seal.New(h.client.Key, keyring.LabelFetchPayload, salt, wire.ManifestHash(raw), m.Chunks)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp(h.git.GitDir, "relay-fetch-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	start := time.Now()
	var got int64
	chunkPath := func(i uint32) string { return filepath.Join(dir, strconv.FormatUint(uint64(i), 10)) }
	for i := uint32(0); i < m.Chunks; i++ {
		q := url.Values{"session": {session}, "index": {strconv.FormatUint(uint64(i), 10)}}
		var body []byte
		// The client retries a dropped or mangled answer; a chunk that
		// arrives but does not authenticate is asked for again too, as a
		// proxy may have altered it.
		for attempt := 0; ; attempt++ {
			b, err := h.client.Do(ctx, http.MethodGet, wire.PathFetchChunk, q, nil, nil)
			if err != nil {
				return fmt.Errorf("download chunk %d of %d: %w", i+1, m.Chunks, h.explain(err))
			}
			if _, err := st.Open(nil, i, b); err != nil {
				if attempt < 3 {
					continue
				}
				return fmt.Errorf("download: %w", err)
			}
			body = b
			break
		}
		if err := os.WriteFile(chunkPath(i), body, 0o600); err != nil {
			return err
		}
		got += int64(len(body))
		h.ui.status("receive %d/%d chunks, %s, %s", i+1, m.Chunks, humanBytes(got), rate(got, time.Since(start)))
	}
	h.ui.done("receive %d/%d chunks, %s, %s, done.", m.Chunks, m.Chunks, humanBytes(got), rate(got, time.Since(start)))
	bundlePath := filepath.Join(dir, "fetch.bundle")
	f, err := os.Create(bundlePath)
	if err != nil {
		return err
	}
	get := func(i uint32) ([]byte, error) {
		b, err := os.ReadFile(chunkPath(i))
		if err == nil {
			os.Remove(chunkPath(i))
		}
		return b, err
	}
	err = payload.Assemble(st, get, m.Compression, m.BundleSize, m.BundleHash, f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fetch from the relay: %w", err)
	}
	c := h.git.Command(ctx, "bundle", "unbundle", bundlePath)
	if err := c.Run(); err != nil {
		return fmt.Errorf("unpack the fetched bundle: %w", err)
	}
	return nil
}
