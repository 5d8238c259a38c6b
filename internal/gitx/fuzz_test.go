package gitx_test

import (
	"context"
	"encoding/hex"
	"errors"
	"os"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/gittest"
	"github.com/git-relay/git-relay/internal/gitx"
)

// refNames are names at the edges of git-check-ref-format's rules.
var refNames = []string{
	"refs/heads/master", "refs/tags/v1.0", "refs/heads/feature/x-1", "refs/heads/-x", "refs/tags/-x",
	"refs/heads/@", "refs/heads/a@b", "refs/heads/a@{1}", "refs/heads/@{", "refs/heads/{", "refs/heads/a}",
	"@", "HEAD", "master", "a/b", "refs", "refs/", "/refs/heads/a", "refs//heads", "refs/heads/a/",
	"refs/heads/a b", "refs/heads/a\tb", "refs/heads/a\nb", "refs/heads/a~1", "refs/heads/a^", "refs/heads/a:b",
	"refs/heads/a?", "refs/heads/a*", "refs/heads/a[", "refs/heads/a]", "refs/heads/a\\b", "refs/heads/a\x7f",
	"refs/heads/a\x01", "refs/heads/a..b", "refs/heads/a.b", "refs/heads/.a", "refs/heads/a.", "refs/heads/a/.b",
	"refs/heads/...", "refs/heads/a/..", "refs/heads/a.lock", "refs/heads/a.lock/b", "refs/heads/.lock",
	"refs/heads/lock", "refs/heads/x.lock.y", "refs/heads/é", "refs/heads/a\xff", "refs/heads/\u00ad",
	"refs/heads/\u202e", "refs/heads/a#b", "refs/heads/a$b", "refs/heads/a'b", "refs/heads/a\"b", "refs/heads/a%b",
	"refs/heads/a!b", "refs/heads/a|b", "refs/heads/a<b>", "refs/heads/a=b", "refs/heads/a,b", "refs/heads/+a",
	"refs/heads/" + strings.Repeat("a", 4085), "refs/heads/" + strings.Repeat("a", 4086),
}

// checkRefFormat asks git itself.
func checkRefFormat(ctx context.Context, name string) (bool, error) {
	_, err := gitx.Repo{}.Run(ctx, "check-ref-format", name)
	var gerr *gitx.Error
	if errors.As(err, &gerr) && gerr.ExitCode == 1 {
		return false, nil
	}
	return err == nil, err
}

// askable says whether git can be asked about name on its command line:
// not with a NUL, and not as an option.
func askable(name string) bool {
	return !strings.ContainsRune(name, 0) && !strings.HasPrefix(name, "-")
}

// TestValidRefNameMatchesGit: ValidRefName agrees with `git
// check-ref-format` on every name at the edges of its rules, except that
// it also refuses names longer than 4096 bytes.
func TestValidRefNameMatchesGit(t *testing.T) {
	gittest.Setenv(t)
	for _, name := range refNames {
		want, err := checkRefFormat(t.Context(), name)
		require.NoError(t, err, "%q", name)
		want = want && len(name) <= 4096
		require.Equal(t, want, gitx.ValidRefName(name), "%q", name)
	}
}

// FuzzValidRefName: ValidRefName never panics, and a name it accepts
// holds nothing that would break a line of git's protocols or a bundle
// header, or let a name leave refs/ (the rules the server relies on, as
// one component at a time rather than as ValidRefName states them). With
// GITX_FUZZ_GIT=1 every input is also checked against `git
// check-ref-format` (slow: one git per input).
func FuzzValidRefName(f *testing.F) {
	for _, name := range refNames {
		f.Add(name)
	}
	withGit := os.Getenv("GITX_FUZZ_GIT") == "1"
	if withGit {
		gittest.Setenv(f)
	}
	f.Fuzz(func(t *testing.T, name string) {
		ok := gitx.ValidRefName(name)
		if withGit && askable(name) {
			want, err := checkRefFormat(context.Background(), name)
			require.NoError(t, err)
			require.Equal(t, want && len(name) <= 4096, ok, "%q", name)
		}
		if !ok {
			return
		}
		require.LessOrEqual(t, len(name), 4096)
		require.NotEqual(t, "@", name)
		comps := strings.Split(name, "/")
		require.GreaterOrEqual(t, len(comps), 2, "%q has one level", name)
		for _, c := range comps {
			require.NotEmpty(t, c, "%q has an empty component", name)
			require.False(t, c[0] == '.', "%q", name)
			require.False(t, strings.HasSuffix(c, ".lock"), "%q", name)
			require.NotEqual(t, "..", c)
		}
		require.False(t, name[len(name)-1] == '.', "%q", name)
		require.NotContains(t, name, "..")
		require.NotContains(t, name, "@{")
		for i := 0; i < len(name); i++ {
			c := name[i]
			require.False(t, c < 0x20 || c == 0x7f || strings.IndexByte(" ~^:?*[\\", c) >= 0, "%q holds %q", name, c)
		}
		// Valid names are valid in any context they are put in.
		if len(name) <= 4096-len("refs/heads/") {
			require.True(t, gitx.ValidRefName("refs/heads/"+name), "%q", name)
		}
	})
}

// FuzzValidOID: ValidOID accepts exactly 40 lowercase hex digits.
func FuzzValidOID(f *testing.F) {
	for _, s := range []string{gitx.ZeroID, strings.Repeat("a", 40), strings.Repeat("A", 40), strings.Repeat("a", 39), strings.Repeat("a", 64), "", "g" + strings.Repeat("0", 39)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := hex.DecodeString(s)
		want := err == nil && len(b) == 20 && s == strings.ToLower(s)
		require.Equal(t, want, gitx.ValidOID(s), "%q", s)
		if gitx.ValidOID(s) {
			require.True(t, utf8.ValidString(s))
		}
	})
}
