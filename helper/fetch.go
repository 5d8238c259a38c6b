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
	"sync"
	"time"

	"github.com/git-relay/git-relay/internal/keyring"
	"github.com/git-relay/git-relay/internal/payload"
	"github.com/git-relay/git-relay/internal/seal"
	"github.com/git-relay/git-relay/internal/wire"
)

// fetch answers a batch of "fetch <id> <name>" lines: it asks the server
// for a bundle of the wanted objects minus what this repository has,
// downloads it in sealed chunks (each a signed response under the body
// limit) while git index-pack unpacks it aside, and lets the objects in
// once all of it checks out.
func (h *Helper) fetch(ctx context.Context, lines []string) error {
	seen := map[string]bool{}
	var ids []string
	for _, l := range lines {
		id, _, _ := strings.Cut(l, " ")
		if len(id) != 40 || seen[id] {
			continue
		}
		seen[id] = true
		ids = append(ids, id)
	}
	// The ids this repository has already need no fetching; one git asks
	// for all of them.
	var wants []string
	if len(ids) > 0 {
		out, err := h.git.RunInput(ctx, strings.NewReader(strings.Join(ids, "\n")+"\n"), "cat-file", "--batch-check=%(objectname)")
		if err != nil {
			return err
		}
		for _, line := range strings.Split(out, "\n") {
			if id, missing := strings.CutSuffix(line, " missing"); missing {
				wants = append(wants, id)
			}
		}
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
	// The server holds the status answer until the manifest is out (or a
	// few seconds pass); the chunks follow while git writes the bundle.
	h.ui.status("server: preparing bundle...")
	start := time.Now()
	st, err := h.fetchStatus(ctx, sess.Session, "1", wire.FetchSending)
	if err != nil {
		return err
	}
	h.ui.detail("server: sending after %s", time.Since(start).Round(time.Millisecond))
	var m wire.FetchManifest
	if err := json.Unmarshal(st.Manifest, &m); err != nil {
		return fmt.Errorf("decode fetch manifest: %w", err)
	}
	if m.Version != wire.FetchManifestVersion {
		return fmt.Errorf("the relay speaks fetch version %d, this helper %d: use the same git-relay release on both sides", m.Version, wire.FetchManifestVersion)
	}
	if m.Session != sess.Session || m.Repo != h.repo {
		return errors.New("the relay's fetch manifest is for another session")
	}
	if m.ChunkSize == 0 {
		h.ui.done("server: nothing to send.")
		return nil
	}
	return h.download(ctx, sess.Session, m, st.Manifest, st.Totals)
}

// fetchStatus asks for a fetch's status until it has reached phase
// (wire.FetchSending, which wire.FetchReady passes too, or wire.FetchReady);
// the server holds each answer a few seconds. It fails if the fetch did.
func (h *Helper) fetchStatus(ctx context.Context, session, wait, phase string) (*wire.FetchStatus, error) {
	q := url.Values{"session": {session}, "wait": {wait}}
	var st wire.FetchStatus
	for {
		if _, err := h.client.Do(ctx, http.MethodGet, wire.PathFetchStatus, q, nil, &st); err != nil {
			return nil, h.explain(err)
		}
		switch st.Phase {
		case wire.FetchFailed:
			return nil, fmt.Errorf("the relay could not prepare the fetch: %s", st.Message)
		case wire.FetchReady:
			return &st, nil
		case wire.FetchSending:
			if phase == wire.FetchSending {
				return &st, nil
			}
		}
	}
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

// download fetches the chunks, a few at a time and while the server is
// still writing the bundle (early gives their count when it was done
// already), opens each one as it arrives (a chunk that fails
// authentication is asked for again, as a proxy may have altered it) and
// writes its plaintext at its place in a payload file under the git dir. The chunk that says it is the last one must open as the final
// chunk. git index-pack reads the authenticated chunks in order as they
// land, into a quarantine: only when every chunk up to the final one has
// authenticated and the whole matches the totals' size and hash do its
// objects join the repository.
func (h *Helper) download(ctx context.Context, session string, m wire.FetchManifest, raw []byte, early *wire.Totals) error {
	salt, err := hex.DecodeString(m.Salt)
	if err != nil || len(salt) != 32 {
		return errors.New("bad salt in the relay's fetch manifest")
	}
	if m.ChunkSize <= 0 || int64(m.ChunkSize)+1+seal.Overhead > h.maxBdy {
		return errors.New("the relay's fetch manifest has a chunk size over relay.maxBody")
	}
	if m.Compression != wire.CompressNone && m.Compression != wire.CompressZstd {
		return fmt.Errorf("the relay's fetch manifest names an unknown compression %q", m.Compression)
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

	// The index of the final chunk, once a chunk has said so.
	var (
		mu     sync.Mutex
		final  = int64(-1)
		got    int64 // chunks received
		totals *wire.Totals
		// finalKnown is closed when final is set.
		finalKnown = make(chan struct{})
	)
	finalIs := func() int64 { mu.Lock(); defer mu.Unlock(); return final }
	feed := func(ctx context.Context, send func(chunk) error) error {
		for i := uint32(0); ; i++ {
			if f := finalIs(); f >= 0 && int64(i) > f {
				return nil
			}
			// A bundle already written when the manifest came has a known
			// count: no need to ask past it.
			if early != nil && i >= early.Chunks {
				return nil
			}
			if err := send(chunk{i: i}); err != nil {
				return err
			}
		}
	}
	plains := make([][]byte, chunkWorkers)
	ordered := payload.NewOrdered(f, m.ChunkSize)
	unpacked, err := h.startUnpack(ctx, dir, ordered, m.Compression)
	if err != nil {
		return err
	}
	err = h.moveChunks(ctx, "receive", 0, feed, func(ctx context.Context, w int, c chunk) (int64, error) {
		i := c.i
		q := url.Values{"session": {session}, "index": {strconv.FormatUint(uint64(i), 10)}}
		for attempt := 0; ; attempt++ {
			if f := finalIs(); f >= 0 && int64(i) > f {
				return 0, nil // asked for before the end was known
			}
			b, err := h.client.Do(ctx, http.MethodGet, wire.PathFetchChunk, q, nil, nil)
			var api *wire.APIError
			switch {
			case errors.As(err, &api) && api.Code == wire.CodeNotReady:
				continue // the server waited a few seconds; git is still at it
			case errors.As(err, &api) && api.Code == wire.CodeRange:
				// Past the end, which another worker is about to learn
				// from the final chunk; the count is checked at the end.
				select {
				case <-finalKnown:
					return 0, nil
				case <-ctx.Done():
					return 0, ctx.Err()
				}
			case err != nil:
				return 0, fmt.Errorf("download chunk %d: %w", i+1, h.explain(err))
			}
			// The client retries a dropped or mangled answer; a chunk that
			// arrives but does not authenticate is asked for again too, as
			// a proxy may have altered it.
			last := len(b) > 0 && b[0] == wire.FetchChunkFinal
			if len(b) > 0 {
				plains[w], err = st.Open(plains[w][:0], i, last, b[1:])
			} else {
				err = fmt.Errorf("chunk %d: empty answer: %w", i, seal.ErrAuth)
			}
			if err != nil {
				if attempt >= 3 {
					return 0, fmt.Errorf("download: %w", err)
				}
				continue
			}
			if _, err := f.WriteAt(plains[w], int64(i)*int64(m.ChunkSize)); err != nil {
				return 0, err
			}
			ordered.Add(i, len(plains[w]), last)
			mu.Lock()
			got++
			if last && final < 0 {
				final = int64(i)
				close(finalKnown)
			}
			mu.Unlock()
			return int64(len(plains[w])), nil
		}
	})
	if err == nil {
		var status *wire.FetchStatus
		if status, err = h.fetchStatus(ctx, session, "ready", wire.FetchReady); err == nil {
			t := status.Totals
			if t == nil || t.Compression != m.Compression || int64(t.Chunks) != final+1 || got != final+1 {
				err = errors.New("fetch from the relay: the chunks do not add up to the relay's totals")
			} else {
				totals = t
			}
		}
	}
	if err != nil {
		ordered.Abort(err)
		<-unpacked
		return err
	}
	// Every chunk is in and authenticated; git index-pack finishes what it
	// read meanwhile, and the bundle it read must be the one the totals
	// describe before its objects are let in.
	start := time.Now()
	u := <-unpacked
	if u.err != nil {
		return u.err
	}
	if u.size != totals.BundleSize || u.hash != totals.BundleHash {
		return errors.New("fetch from the relay: the bundle does not match the relay's totals (size or hash)")
	}
	if err := h.admitPack(ctx, u.quarantine); err != nil {
		return err
	}
	h.ui.detail("bundle: %s, checked and unpacked %s after the last chunk", humanBytes(totals.BundleSize), time.Since(start).Round(time.Millisecond))
	return nil
}
