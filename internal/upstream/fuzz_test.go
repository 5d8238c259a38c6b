package upstream

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-git/go-git/v5/plumbing/format/pktline"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp/capability"
	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/fuzztest"
	"github.com/git-relay/git-relay/internal/gittest"
	"github.com/git-relay/git-relay/internal/gitx"
)

// fuzzToken is the upstream token of the fuzz targets: no form of it may
// come out of what they parse.
const fuzzToken = "ghs_fuzzT0ken/with+odd=chars"

func fuzzRemote(t testing.TB) *Remote {
	r, err := New("https://git.example/owner/repo.git", fuzzToken)
	require.NoError(t, err)
	return r
}

// fuzzRepo is a bare repository with a branch, a second branch, an
// annotated tag and HEAD, and a pre-receive hook that refuses
// refs/heads/refused and prints the token, as a hook that echoes its
// environment might.
func fuzzRepo(t testing.TB) (dir, tip string) {
	root := t.TempDir()
	work := filepath.Join(root, "work")
	gittest.Git(t, root, "init", "-q", "-b", "master", work)
	require.NoError(t, os.WriteFile(filepath.Join(work, "a.txt"), []byte("a\n"), 0o644))
	gittest.Git(t, work, "add", ".")
	gittest.Git(t, work, "commit", "-qm", "one")
	gittest.Git(t, work, "tag", "-a", "-m", "release", "v1")
	dir = filepath.Join(root, "up.git")
	gittest.Git(t, root, "clone", "-q", "--bare", work, dir)
	gittest.Git(t, dir, "branch", "old", "master")
	hook := "#!/bin/sh\nwhile read old new ref; do\n  if [ \"$ref\" = refs/heads/refused ]; then echo \"token " + fuzzToken + " refused\" >&2; exit 1; fi\ndone\necho hook says hello\n"
	require.NoError(t, os.WriteFile(filepath.Join(dir, "hooks", "pre-receive"), []byte(hook), 0o755))
	return dir, gittest.Git(t, work, "rev-parse", "HEAD")
}

func runGit(t testing.TB, stdin []byte, args ...string) []byte {
	var out bytes.Buffer
	c := gitx.Repo{Env: []string{"GIT_PROTOCOL="}}.Command(context.Background(), args...)
	c.Stdin = bytes.NewReader(stdin)
	c.Stdout = &out
	require.NoError(t, c.Run(), "git %v", args)
	return out.Bytes()
}

// realAdvertisements returns what git's upload-pack and receive-pack
// advertise for a repository and for an empty one, raw and in the HTTP
// form (with its "# service=" line).
func realAdvertisements(t testing.TB) (raw, service []string, ads [][]byte) {
	dir, _ := fuzzRepo(t)
	empty := filepath.Join(t.TempDir(), "empty.git")
	gittest.Git(t, t.TempDir(), "init", "-q", "--bare", empty)
	for _, d := range []string{dir, empty} {
		for _, svc := range []string{"upload-pack", "receive-pack"} {
			adv := runGit(t, nil, svc, "--advertise-refs", d)
			var b bytes.Buffer
			e := pktline.NewEncoder(&b)
			require.NoError(t, e.EncodeString("# service=git-"+svc+"\n"))
			require.NoError(t, e.Flush())
			b.Write(adv)
			raw, service, ads = append(raw, ""), append(service, ""), append(ads, adv)
			raw, service, ads = append(raw, ""), append(service, "git-"+svc), append(ads, b.Bytes())
		}
	}
	return raw, service, ads
}

// FuzzDecodeAdvertisement: any bytes as a ref advertisement (with or
// without the HTTP service line) decode or fail with an error; what
// decodes lists branches and tags under valid names with valid ids (the
// relay writes them one per line to its clients), and can be negotiated
// against without a panic.
func FuzzDecodeAdvertisement(f *testing.F) {
	_, services, ads := realAdvertisements(f)
	for i, a := range ads {
		f.Add(a, services[i] != "")
	}
	f.Add([]byte("0000"), false)
	f.Add([]byte("0019ERR access denied\n"), false)
	// A name no git would advertise.
	var bad bytes.Buffer
	e := pktline.NewEncoder(&bad)
	require.NoError(f, e.EncodeString(strings.Repeat("1", 40)+" refs/heads/a\nb\x00ofs-delta report-status\n"))
	require.NoError(f, e.EncodeString(strings.Repeat("2", 40)+" refs/tags/x..y\n"))
	require.NoError(f, e.Flush())
	f.Add(bad.Bytes(), false)
	f.Fuzz(func(t *testing.T, data []byte, http bool) {
		defer fuzztest.Watchdog(t, 30*time.Second)()
		svc := ""
		if http {
			svc = "git-upload-pack"
		}
		fuzztest.Bounded(t, len(data), 1<<20, 256, func() {
			adv, err := decodeAdvertisement(bytes.NewReader(data), svc)
			if err != nil {
				return
			}
			require.NotNil(t, adv)
			if svc != "" {
				require.Equal(t, "# service="+svc, strings.TrimSuffix(string(adv.Prefix[0]), "\n"))
			}
			refs, err := refsOf(adv)
			if err == nil {
				for name, id := range refs.Refs {
					require.True(t, listed(name), "%q", name)
					require.True(t, gitx.ValidRefName(name), "listed a ref named %q", name)
					require.True(t, gitx.ValidOID(id), "%q", id)
				}
				for name, id := range refs.Peeled {
					require.True(t, gitx.ValidRefName(name), "listed a peeled ref named %q", name)
					require.True(t, gitx.ValidOID(id), "%q", id)
				}
			}
			for _, req := range []PushRequest{
				{Updates: []Update{{Ref: "refs/heads/x", Old: ZeroID, New: strings.Repeat("1", 40)}}, Pack: strings.NewReader("")},
				{Updates: []Update{{Ref: "refs/heads/x", Old: strings.Repeat("1", 40), New: ZeroID}}, Atomic: true, Options: []string{"o"}},
			} {
				caps, _, err := negotiate(adv, req)
				if err == nil {
					require.True(t, caps.Supports(capability.ReportStatus))
				}
			}
		})
	})
}

// realReports returns receive-pack's answers to a real push (a create
// that lands, a delete, and a create its hook refuses, printing the
// token), with and without side band.
func realReports(t testing.TB) (reports [][]byte, sideband []bool) {
	for _, sb := range []bool{false, true} {
		for _, refused := range []bool{false, true} {
			dir, tip := fuzzRepo(t)
			adv := runGit(t, nil, "receive-pack", "--advertise-refs", dir)
			decoded, err := decodeAdvertisement(bytes.NewReader(adv), "")
			require.NoError(t, err)
			req := PushRequest{Updates: []Update{{Ref: "refs/heads/new", Old: ZeroID, New: tip}, {Ref: "refs/heads/old", Old: tip, New: ZeroID}}, Progress: io.Discard}
			if refused {
				req.Updates[0].Ref = "refs/heads/refused"
			}
			caps, _, err := negotiate(decoded, req)
			require.NoError(t, err)
			if !sb {
				caps.Delete(capability.Sideband64k)
			}
			var in bytes.Buffer
			require.NoError(t, writeRequest(&in, caps, req))
			out := runGit(t, in.Bytes(), "receive-pack", dir)
			require.True(t, bytes.HasPrefix(out, adv))
			reports, sideband = append(reports, out[len(adv):]), append(sideband, sb)
		}
	}
	return reports, sideband
}

// FuzzReadResult: any bytes as receive-pack's report, with or without
// side band, give an error or a result that names every ref of the push
// and no other, and holds no form of the token; the hook messages it
// keeps stay bounded, and progress goes where it was asked to.
func FuzzReadResult(f *testing.F) {
	reports, sbs := realReports(f)
	for i, rep := range reports {
		f.Add(rep, sbs[i])
	}
	f.Add([]byte("000eunpack ok\n0000"), false)
	f.Add([]byte("0019unpack "+fuzzToken+"\n0000"), false)
	f.Add([]byte("0015\x02progress 50%\r0000"), true)
	f.Add([]byte("0018\x03fatal: it broke\n0000"), true)
	r := fuzzRemote(f)
	f.Fuzz(func(t *testing.T, data []byte, sb bool) {
		defer fuzztest.Watchdog(t, 30*time.Second)()
		var progress bytes.Buffer
		req := PushRequest{Updates: []Update{
			{Ref: "refs/heads/new", Old: ZeroID, New: strings.Repeat("1", 40)},
			{Ref: "refs/heads/old", Old: strings.Repeat("1", 40), New: ZeroID},
		}, Progress: &progress}
		var res *PushResult
		var err error
		fuzztest.Bounded(t, len(data), 1<<20, 256, func() {
			res, err = r.readResult(bufio.NewReader(bytes.NewReader(data)), sb, req)
		})
		require.LessOrEqual(t, progress.Len(), len(data))
		if err != nil {
			require.Nil(t, res)
			return
		}
		require.Len(t, res.Refs, len(req.Updates))
		ok := res.UnpackError == ""
		for _, u := range req.Updates {
			reason, found := res.Refs[u.Ref]
			require.True(t, found, "no result for %s", u.Ref)
			ok = ok && reason == ""
			requireRedacted(t, reason)
		}
		require.Equal(t, ok, res.OK())
		requireRedacted(t, res.UnpackError)
		requireRedacted(t, res.Messages)
		require.LessOrEqual(t, len(res.Messages), 8<<10)
	})
}

func requireRedacted(t *testing.T, s string) {
	t.Helper()
	for _, form := range secretForms(fuzzToken) {
		require.NotContains(t, s, form, "a form of the token came through")
	}
}
