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
	// The server holds the status answer until the bundle is ready (or a
	// few seconds pass), so a small fetch takes one round trip.
	q := url.Values{"session": {sess.Session}, "wait": {"1"}}
	var st wire.FetchStatus
	h.ui.status("server: preparing bundle...")
	for {
		if _, err := h.client.Do(ctx, http.MethodGet, wire.PathFetchStatus, q, nil, &st); err != nil {
			return h.explain(err)
		}
		if st.Ready || st.Phase == "failed" {
			break
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

// download fetches the chunks, a few at a time, opens each one as it
// arrives (a chunk that fails authentication is asked for again, as a
// proxy may have altered it) and writes its plaintext at its place in a
// payload file under the git dir. Only when every chunk, the final one
// included, has authenticated and the whole matches the manifest's hash is
// the bundle handed to git, which unbundles it with its own tools.
func (h *Helper) download(ctx context.Context, session string, m wire.FetchManifest, raw []byte) error {
	salt, err := hex.DecodeString(m.Salt)
	if err != nil || len(salt) != 32 {
		return errors.New("bad salt in the relay's fetch manifest")
	}
	if m.ChunkSize <= 0 || int64(m.ChunkSize)+seal.Overhead > h.maxBdy || seal.Chunks(m.PayloadSize, m.ChunkSize) != m.Chunks {
		return errors.New("the relay's fetch manifest has inconsistent sizes")
	}
	st, err := seal.New(h.client.Key, keyring.LabelFetchPayload, salt, wire.ManifestHash(raw))
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp(h.git.GitDir, "relay-fetch-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	payloadPath := filepath.Join(dir, "payload")
	f, err := os.Create(payloadPath)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(m.PayloadSize); err != nil {
		return err
	}

	plains := make([][]byte, chunkWorkers)
	err = h.eachChunk(ctx, "receive", m.Chunks, func(ctx context.Context, w int, c chunk) (int64, error) {
		i := c.i
		q := url.Values{"session": {session}, "index": {strconv.FormatUint(uint64(i), 10)}}
		// The client retries a dropped or mangled answer; a chunk that
		// arrives but does not authenticate is asked for again too, as a
		// proxy may have altered it.
		for attempt := 0; ; attempt++ {
			b, err := h.client.Do(ctx, http.MethodGet, wire.PathFetchChunk, q, nil, nil)
			if err != nil {
				return 0, fmt.Errorf("download chunk %d of %d: %w", i+1, m.Chunks, h.explain(err))
			}
			plains[w], err = st.Open(plains[w][:0], i, c.final, b)
			if err == nil {
				break
			}
			if attempt >= 3 {
				return 0, fmt.Errorf("download: %w", err)
			}
		}
		_, err := f.WriteAt(plains[w], int64(i)*int64(m.ChunkSize))
		return int64(len(plains[w])), err
	})
	if err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	bundlePath, err := payload.Finish(payloadPath, m.Compression, m.PayloadSize, m.BundleSize, m.BundleHash, filepath.Join(dir, "fetch.bundle"))
	if err != nil {
		return fmt.Errorf("fetch from the relay: %w", err)
	}
	if err := h.git.Command(ctx, "bundle", "unbundle", bundlePath).Run(); err != nil {
		return fmt.Errorf("unpack the fetched bundle: %w", err)
	}
	return nil
}
