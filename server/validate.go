package server

import (
	"context"
	"regexp"
	"strings"

	"github.com/git-relay/git-relay/internal/gitx"
	"github.com/git-relay/git-relay/internal/upstream"
)

// GitHub's rules: an owner is 1-39 letters, digits or single hyphens, not
// starting or ending with one; a repository is 1-100 letters, digits, '.',
// '-' or '_', and not "." or "..".
var (
	ownerRE = regexp.MustCompile(`^[A-Za-z0-9](?:[A-Za-z0-9]|-[A-Za-z0-9]){0,38}$`)
	repoRE  = regexp.MustCompile(`^[A-Za-z0-9._-]{1,100}$`)
	oidRE   = regexp.MustCompile(`^[0-9a-f]{40}$`)
	sessRE  = regexp.MustCompile(`^[0-9a-f]{32}$`)
)

const zeroID = "0000000000000000000000000000000000000000"

func validRepo(repo string) error {
	owner, name, ok := strings.Cut(repo, "/")
	if !ok || !ownerRE.MatchString(owner) || !repoRE.MatchString(name) || name == "." || name == ".." || strings.HasSuffix(name, ".git") && len(name) == 4 {
		return badRequest("invalid repository %q (expected owner/repo)", repo)
	}
	return nil
}

// validRef accepts what `git check-ref-format` accepts, and only branches
// and tags as destinations.
func validRef(ctx context.Context, ref string) error {
	if !strings.HasPrefix(ref, "refs/heads/") && !strings.HasPrefix(ref, "refs/tags/") {
		return badRequest("invalid ref %q: only refs/heads/* and refs/tags/* can be pushed", ref)
	}
	if strings.ContainsAny(ref, "\x00\n") || len(ref) > 1024 {
		return badRequest("invalid ref name %q", ref)
	}
	if ok, err := (gitx.Repo{}).Ok(ctx, "check-ref-format", ref); err != nil || !ok {
		return badRequest("invalid ref name %q", ref)
	}
	return nil
}

func validOID(id string) bool { return oidRE.MatchString(id) }

// redactor removes every form of the upstream token from a message (see
// upstream.Remote.Redact); it is built once from the URL template, as the
// token is the same for every repository.
func redactor(template, token string) func(string) string {
	r, err := upstream.New(strings.ReplaceAll(template, "{repo}", "owner/repo"), token)
	if err != nil {
		return func(s string) string { return s }
	}
	return r.Redact
}
