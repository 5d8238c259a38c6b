package sidecar_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/git-relay/git-relay/internal/gittest"
	"github.com/stretchr/testify/require"
)

// TestSync walks one sidecar through the life of a branch, on a local
// workspace and on one behind a real sshd whose login shell is noisy and
// whose git refuses -C. After every step the workspace must show exactly
// the work tree's files.
func TestSync(t *testing.T) {
	for _, kind := range []transportKind{local, overSSH} {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, kind, "Welcome to devbox! tree 0123 need-bootstrap the workspace is missing")
			w.write(".gitignore", "build/\n*.log\n")
			w.write("README.md", "hello\n")
			w.write("src/main.c", "int main(void) { return 0; }\n")
			w.write("src/old name.txt", "to be renamed\n")
			w.write("scripts/run.sh", "#!/bin/sh\necho run\n")
			w.write("doomed.txt", "to be deleted\n")
			w.commitAll("initial")
			w.git(w.repo, "push", "-q", "origin", "main")
			// An unpushed commit, a staged change and an untracked file.
			w.write("unpushed.txt", "only here\n")
			w.commitAll("unpushed")
			w.write("README.md", "hello\nstaged\n")
			w.git(w.repo, "add", "README.md")
			w.write("notes/untracked.md", "untracked\n")
			w.write("debug.log", "ignored locally\n")

			w.mustSidecar("add", "dev", w.dest)
			out := w.mustSidecar("setup")
			require.Contains(t, out, "in sync")
			require.Contains(t, out, "via origin")
			w.requireSame()
			head := w.git(w.repo, "rev-parse", "HEAD")
			// origin lacks the unpushed commit: the baseline is the
			// merge-base with origin's branch, not origin's tip.
			require.Equal(t, w.git(w.repo, "rev-parse", "HEAD~1"), w.git(w.ws, "rev-parse", "HEAD"))
			require.NotEqual(t, head, w.git(w.ws, "rev-parse", "HEAD"))
			require.NoFileExists(t, filepath.Join(w.ws, "debug.log"))

			// Every kind of change at once.
			w.write("src/main.c", "int main(void) { return 1; }\n")
			w.write("src/staged.c", "staged\n")
			w.git(w.repo, "add", "src/staged.c")
			w.write("new dir/it's new.txt", "new\n")
			require.NoError(t, os.Remove(filepath.Join(w.repo, "doomed.txt")))
			require.NoError(t, os.Chmod(filepath.Join(w.repo, "scripts/run.sh"), 0o755))
			require.NoError(t, os.Symlink("src/main.c", filepath.Join(w.repo, "link-to-main")))
			require.NoError(t, os.WriteFile(filepath.Join(w.repo, "blob.bin"), []byte{0, 1, 2, 255, 0, 'x', '\n', 0}, 0o644))
			w.git(w.repo, "mv", "src/old name.txt", "src/new name.txt")
			w.write("whitespace.txt", "trailing   \n\tmixed \t\n")
			before := sessions(w)
			out = w.sync()
			require.Contains(t, out, "incremental")
			if w.sshd != nil {
				require.Equal(t, before+1, sessions(w), "an incremental sync is one remote command")
			}

			// Untracked file deleted, mode flipped back, symlink retargeted.
			require.NoError(t, os.RemoveAll(filepath.Join(w.repo, "new dir")))
			require.NoError(t, os.Chmod(filepath.Join(w.repo, "scripts/run.sh"), 0o644))
			require.NoError(t, os.Remove(filepath.Join(w.repo, "link-to-main")))
			require.NoError(t, os.Symlink("README.md", filepath.Join(w.repo, "link-to-main")))
			w.sync()

			// A build product in the workspace, ignored there, survives.
			require.NoError(t, os.MkdirAll(filepath.Join(w.ws, "build"), 0o755))
			require.NoError(t, os.WriteFile(filepath.Join(w.ws, "build", "main.o"), []byte("object"), 0o644))
			w.write("src/main.c", "int main(void) { return 2; }\n")
			w.sync()
			b, err := os.ReadFile(filepath.Join(w.ws, "build", "main.o"))
			require.NoError(t, err)
			require.Equal(t, "object", string(b))

			// Origin goes away; commits and edits still sync.
			require.NoError(t, os.Rename(w.origin, w.origin+".gone"))
			w.write("offline.txt", "written while origin is unreachable\n")
			w.commitAll("offline commit")
			w.write("offline.txt", "and edited after\n")
			out = w.sync()
			require.Contains(t, out, "incremental")

			// A branch switch bootstraps again; origin is unreachable, but
			// the workspace already has the merge-base with origin/main.
			w.git(w.repo, "switch", "-q", "-c", "feature")
			w.write("feature.txt", "feature work\n")
			out = w.sync()
			require.Contains(t, out, "bootstrap via workspace")
			require.Contains(t, out, "branch changed from main to feature")
			require.Equal(t, w.git(w.repo, "merge-base", "HEAD", "origin/main"), w.git(w.ws, "rev-parse", "HEAD"))

			// Origin is back and the branch pushed; setup again puts the
			// baseline at HEAD. Amending HEAD then rewrites history under
			// the baseline, and the next sync bootstraps by itself.
			require.NoError(t, os.Rename(w.origin+".gone", w.origin))
			w.commitAll("feature")
			w.git(w.repo, "push", "-q", "origin", "feature")
			out = w.mustSidecar("setup")
			require.Contains(t, out, "bootstrap via origin")
			require.Equal(t, w.git(w.repo, "rev-parse", "HEAD"), w.git(w.ws, "rev-parse", "HEAD"))
			w.write("feature.txt", "feature work, amended\n")
			w.git(w.repo, "commit", "-q", "-a", "--amend", "-m", "feature (amended)")
			out = w.sync()
			require.Contains(t, out, "history was rewritten")

			// Edits made directly in the workspace are kept, then undone.
			require.NoError(t, os.WriteFile(filepath.Join(w.ws, "README.md"), []byte("edited on the sidecar\n"), 0o644))
			require.NoError(t, os.WriteFile(filepath.Join(w.ws, "sidecar-only.txt"), []byte("mine\n"), 0o644))
			st := w.mustSidecar("status")
			require.Contains(t, st, "edited there")
			w.write("src/main.c", "int main(void) { return 3; }\n")
			out = w.sync()
			require.Contains(t, out, "kept them in refs/sidecar/backup/")
			backups := w.git(w.ws, "for-each-ref", "--format=%(refname)", "refs/sidecar/backup/")
			require.NotEmpty(t, backups)
			ref := strings.Fields(backups)[len(strings.Fields(backups))-1]
			require.Equal(t, "edited on the sidecar", w.git(w.ws, "show", ref+":README.md"))
			require.Equal(t, "mine", w.git(w.ws, "show", ref+":sidecar-only.txt"))

			// Nothing changed: a sync still verifies.
			out = w.sync()
			require.Contains(t, out, "no changes")
			st = w.mustSidecar("status")
			require.Contains(t, st, "state:     in sync")
			require.Contains(t, st, "last error: none")
		})
	}
}

func sessions(w *world) int {
	if w.sshd == nil {
		return 0
	}
	return w.sshd.Sessions()
}

// TestBundle: when the workspace cannot get the commits from origin, they
// travel as a bundle over the same connection, and later bundles carry
// only what the workspace lacks.
func TestBundle(t *testing.T) {
	for _, kind := range []transportKind{local, overSSH} {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, kind, "")
			// origin exists but was never pushed to.
			w.write("a.txt", "a\n")
			w.commitAll("a")
			w.write("b.txt", "b\n")
			w.commitAll("b")
			w.mustSidecar("add", "dev", w.dest)
			out := w.mustSidecar("setup")
			require.Contains(t, out, "bootstrap via bundle")
			w.requireSame()
			require.Equal(t, w.git(w.repo, "rev-parse", "HEAD"), w.git(w.ws, "rev-parse", "HEAD"))
			first := bytesSent(t, out)

			// No origin at all, then HEAD (the baseline) is amended: the
			// new bundle builds on what the workspace has.
			w.git(w.repo, "remote", "remove", "origin")
			w.write("c.txt", strings.Repeat("c", 100)+"\n")
			w.git(w.repo, "add", "c.txt")
			w.git(w.repo, "commit", "-q", "--amend", "-m", "b and c")
			out = w.sync()
			require.Contains(t, out, "history was rewritten")
			require.Contains(t, out, "bootstrap via bundle")
			require.Equal(t, w.git(w.repo, "rev-parse", "HEAD"), w.git(w.ws, "rev-parse", "HEAD"))
			require.Less(t, bytesSent(t, out), first+2000, "the second bundle must not resend the history")
		})
	}
}

func bytesSent(t *testing.T, out string) int {
	t.Helper()
	m := regexp.MustCompile(`(\d+) bytes sent`).FindStringSubmatch(out)
	require.NotNil(t, m, out)
	n, err := strconv.Atoi(m[1])
	require.NoError(t, err)
	return n
}

// TestHostileConfig: the user's diff settings and the workspace's apply
// settings must not break the patches.
func TestHostileConfig(t *testing.T) {
	w := newWorld(t, local, "")
	for _, kv := range [][2]string{
		{"diff.noprefix", "true"}, {"color.ui", "always"}, {"diff.external", "false"},
		{"diff.mnemonicPrefix", "true"}, {"diff.renames", "copies"}, {"core.quotePath", "true"},
	} {
		w.git(w.repo, "config", "--global", kv[0], kv[1])
	}
	w.write("a.txt", "a\n")
	w.commitAll("a")
	w.git(w.repo, "push", "-q", "origin", "main")
	w.mustSidecar("add", "dev", w.dest)
	w.mustSidecar("setup")
	// The workspace refuses whitespace errors by default.
	w.git(w.ws, "config", "apply.whitespace", "error")
	w.write("a.txt", "a   \n\tb \n")
	w.write("ünïcode file.txt", "x\n")
	w.sync()
}

// TestUnknownHostKeyIsRefused: first contact with a host that is not in
// known_hosts fails closed and creates nothing; --accept-new opts in.
func TestUnknownHostKeyIsRefused(t *testing.T) {
	w := newWorld(t, overSSH, "")
	require.NoError(t, os.Remove(filepath.Join(w.home, ".ssh", "known_hosts")))
	w.write("a.txt", "a\n")
	w.commitAll("a")
	w.mustSidecar("add", "dev", w.dest)
	_, errOut, err := w.sidecar("setup")
	require.Error(t, err)
	require.Contains(t, errOut, "is not in")
	require.Contains(t, errOut, "SHA256:")
	require.Contains(t, errOut, "--accept-new")
	require.Equal(t, 1, strings.Count(strings.TrimSpace(errOut), "\n")+1, "one line: %q", errOut)
	require.NoDirExists(t, w.ws)
	require.Equal(t, 0, w.sshd.Sessions())

	out := w.mustSidecar("setup", "--accept-new")
	require.Contains(t, out, "in sync")
	w.requireSame()
	kh, err := os.ReadFile(filepath.Join(w.home, ".ssh", "known_hosts"))
	require.NoError(t, err)
	require.Contains(t, string(kh), w.sshd.KnownHostsLine())
}

// TestHomeRelativeWorkspace: host:path without a leading slash is under
// the remote home, and a path starting with '-' is a path, not an option.
func TestHomeRelativeWorkspace(t *testing.T) {
	w := newWorld(t, overSSH, "")
	w.ws = filepath.Join(w.sshd.RemoteHome, "-dash "+nastyName)
	w.dest = "devbox:-dash " + nastyName
	w.write("a.txt", "a\n")
	w.commitAll("a")
	w.git(w.repo, "push", "-q", "origin", "main")
	w.mustSidecar("add", "dev", w.dest)
	require.Contains(t, w.mustSidecar("setup"), "in sync")
	w.requireSame()
	w.write("a.txt", "b\n")
	w.sync()
	out := w.mustSidecar("exec", "--", "pwd")
	require.Contains(t, out, w.ws)
}

// TestMismatchIsReportedAndRepaired: when the workspace does not end up
// with the snapshot's tree (here its git silently skips `read-tree`), the sync
// says so and fails, status shows it, and the next sync rebuilds the
// workspace.
func TestMismatchIsReportedAndRepaired(t *testing.T) {
	w := newWorld(t, local, "")
	real, err := exec.LookPath("git")
	require.NoError(t, err)
	bin := filepath.Join(w.root, "brokengit")
	flag := filepath.Join(w.root, "break-read-tree")
	require.NoError(t, os.MkdirAll(bin, 0o755))
	script := fmt.Sprintf("#!/bin/sh\nif [ -e %s ]; then case \" $* \" in *\" read-tree \"*) exit 0 ;; esac; fi\nexec %s \"$@\"\n",
		shellPattern(flag), shellPattern(real))
	gittest.Script(t, filepath.Join(bin, "git"), script)
	for i, kv := range w.env {
		if strings.HasPrefix(kv, "PATH=") {
			w.env[i] = "PATH=" + bin + ":" + strings.TrimPrefix(kv, "PATH=")
		}
	}
	w.write("a.txt", "a\n")
	w.commitAll("a")
	w.git(w.repo, "push", "-q", "origin", "main")
	w.mustSidecar("add", "dev", w.dest)
	w.mustSidecar("setup")

	require.NoError(t, os.WriteFile(flag, nil, 0o644))
	w.write("a.txt", "changed\n")
	_, errOut, err := w.sidecar("sync")
	require.Error(t, err)
	require.Contains(t, errOut, "does NOT match the work tree after the sync")
	require.Contains(t, errOut, "the next sync rebuilds it")
	st := w.mustSidecar("status")
	require.Contains(t, st, "state:     NOT in sync: the last sync did not verify")
	require.Contains(t, st, "last error:")

	require.NoError(t, os.Remove(flag))
	out := w.sync()
	require.Contains(t, out, "bootstrap")
	require.Contains(t, out, "the last sync did not verify")
	require.NotContains(t, out, "kept them", "what we synced ourselves is not a workspace edit")
	require.Contains(t, w.mustSidecar("status"), "state:     in sync")
}
