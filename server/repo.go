package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/git-relay/git-relay/internal/gitx"
	"github.com/git-relay/git-relay/internal/upstream"
	"github.com/git-relay/git-relay/internal/wire"
)

// repoHandle is one upstream repository and the server's mirror of it.
type repoHandle struct {
	name   string
	remote *upstream.Remote
	mirror gitx.Repo
	dir    string
}

func (s *Server) openRepo(repo string) (*repoHandle, error) {
	if err := validRepo(repo); err != nil {
		return nil, err
	}
	u := strings.ReplaceAll(s.cfg.Upstream, "{repo}", repo)
	remote, err := upstream.New(u, s.cfg.Token)
	if err != nil {
		return nil, fmt.Errorf("upstream for %s: %w", repo, err)
	}
	dir := filepath.Join(s.cfg.DataDir, "mirrors", filepath.FromSlash(repo)+".git")
	return &repoHandle{name: repo, remote: remote, dir: dir, mirror: gitx.Repo{GitDir: dir, Env: remote.GitEnv()}}, nil
}

// list asks upstream for its refs.
func (s *Server) list(ctx context.Context, h *repoHandle) (*upstream.Refs, error) {
	refs, err := h.remote.List(ctx)
	if err != nil {
		return nil, s.upstreamErr(h, err)
	}
	return refs, nil
}

func (s *Server) upstreamErr(h *repoHandle, err error) error {
	switch {
	case errors.Is(err, upstream.ErrNotFound):
		return notFound("upstream repository %s not found (the relay never creates repositories: create it upstream first)", h.name)
	case errors.Is(err, upstream.ErrAuth):
		return &userError{http.StatusBadGateway, wire.CodeUpstream, fmt.Sprintf("upstream refused the relay's credentials for %s (check the server's token)", h.name)}
	}
	return &userError{http.StatusBadGateway, wire.CodeUpstream, fmt.Sprintf("upstream %s: %s", h.name, s.redactor(err.Error()))}
}

// refresh brings the mirror up to date with upstream. The caller holds the
// repository's lock. When the caller has just listed upstream's refs and
// the mirror already matches them, there is nothing to fetch.
func (s *Server) refresh(ctx context.Context, h *repoHandle, known *upstream.Refs) error {
	if known != nil && s.mirrorMatches(ctx, h, known) {
		return nil
	}
	if _, err := os.Stat(filepath.Join(h.dir, "HEAD")); err != nil {
		if err := os.MkdirAll(filepath.Dir(h.dir), 0o700); err != nil {
			return err
		}
		tmp, err := os.MkdirTemp(filepath.Dir(h.dir), ".init-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		if _, err := (gitx.Repo{}).Run(ctx, "init", "--bare", "-q", tmp); err != nil {
			return fmt.Errorf("create mirror: %w", err)
		}
		t := gitx.Repo{GitDir: tmp}
		for _, kv := range [][2]string{{"gc.auto", "0"}, {"core.logAllRefUpdates", "false"}, {"fetch.fsckObjects", "true"}, {"transfer.fsckObjects", "true"}} {
			if _, err := t.Run(ctx, "config", kv[0], kv[1]); err != nil {
				return err
			}
		}
		if err := os.Rename(tmp, h.dir); err != nil && !os.IsExist(err) {
			return fmt.Errorf("create mirror: %w", err)
		}
	}
	_, err := h.mirror.Run(ctx, "fetch", "--prune", "--quiet", "--no-write-fetch-head",
		h.remote.String(), "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")
	if err != nil {
		return fmt.Errorf("refresh mirror of %s: %s", h.name, s.redactor(err.Error()))
	}
	return nil
}

func (s *Server) handleRefs(c *call) {
	repo := c.r.URL.Query().Get("repo")
	h, err := s.openRepo(repo)
	if err != nil {
		c.failErr(err)
		return
	}
	refs, err := s.list(c.r.Context(), h)
	if err != nil {
		c.failErr(err)
		return
	}
	c.reply(http.StatusOK, wire.Refs{
		Repo: repo, Head: refs.Head, Refs: refs.Refs, Peeled: refs.Peeled,
		AllowForce: s.cfg.AllowForce, MaxBody: s.cfg.MaxBody,
	})
}

// handleRemoteInfo is the seed's call: the tip of one branch, "" if absent.
func (s *Server) handleRemoteInfo(c *call) {
	q := c.r.URL.Query()
	repo, branch := q.Get("repo"), q.Get("branch")
	if branch == "" {
		branch = "master"
	}
	h, err := s.openRepo(repo)
	if err != nil {
		c.failErr(err)
		return
	}
	ref := branch
	if !strings.HasPrefix(ref, "refs/") {
		ref = "refs/heads/" + branch
	}
	if err := validRef(c.r.Context(), ref); err != nil {
		c.failErr(err)
		return
	}
	refs, err := s.list(c.r.Context(), h)
	if err != nil {
		c.failErr(err)
		return
	}
	c.reply(http.StatusOK, wire.RemoteInfo{Repo: repo, Branch: branch, SHA: refs.Refs[ref]})
}

func (s *Server) mirrorMatches(ctx context.Context, h *repoHandle, known *upstream.Refs) bool {
	if _, err := os.Stat(filepath.Join(h.dir, "HEAD")); err != nil {
		return false
	}
	out, err := h.mirror.Run(ctx, "for-each-ref", "--format=%(objectname) %(refname)", "refs/heads/", "refs/tags/")
	if err != nil {
		return false
	}
	n := 0
	for _, line := range strings.Split(out, "\n") {
		id, ref, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if known.Refs[ref] != id {
			return false
		}
		n++
	}
	return n == len(known.Refs)
}
