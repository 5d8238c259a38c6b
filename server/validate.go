package server

import (
	"net/http"
	"regexp"
	"strings"

	"github.com/git-relay/git-relay/internal/gitx"
	"github.com/git-relay/git-relay/internal/wire"
)

// GitHub's rules: an owner is 1-39 letters, digits or single hyphens, not
// starting or ending with one; a repository is 1-100 letters, digits, '.',
// '-' or '_', and not "." or "..".
var (
	ownerRE = regexp.MustCompile(`^[A-Za-z0-9](?:[A-Za-z0-9]|-[A-Za-z0-9]){0,38}$`)
	repoRE  = regexp.MustCompile(`^[A-Za-z0-9._-]{1,100}$`)
)

func validRepo(repo string) error {
	owner, name, ok := strings.Cut(repo, "/")
	if !ok || !ownerRE.MatchString(owner) || !repoRE.MatchString(name) || name == "." || name == ".." || name == ".git" {
		return badRequest("invalid repository %q (expected owner/repo)", repo)
	}
	return nil
}

// handleRemoteInfo is the seed's call: the tip of one branch, "" if absent.
// The helper does not use it; it stays for the tools that do.
func (s *Server) handleRemoteInfo(c *call) {
	q := c.r.URL.Query()
	repo, branch := q.Get("repo"), q.Get("branch")
	if branch == "" {
		branch = "master"
	}
	m, err := s.mirrors.get(repo)
	if err != nil {
		c.failErr(err)
		return
	}
	ref := branch
	if !strings.HasPrefix(ref, "refs/") {
		ref = "refs/heads/" + branch
	}
	if !gitx.ValidRefName(ref) {
		c.failErr(badRequest("invalid branch %q", branch))
		return
	}
	refs, err := m.remote.List(c.r.Context())
	if err != nil {
		c.failErr(s.upstreamErr(m, err))
		return
	}
	c.reply(http.StatusOK, wire.RemoteInfo{Repo: repo, Branch: branch, SHA: refs.Refs[ref]}, nil)
}
