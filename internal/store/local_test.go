package store_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/store"
	"github.com/git-relay/git-relay/internal/store/storetest"
)

// TestMain lets the test binary act as another process sharing a local
// store (see runChild).
func TestMain(m *testing.M) {
	if mode := os.Getenv("STORETEST_CHILD"); mode != "" {
		os.Exit(runChild(mode))
	}
	os.Exit(m.Run())
}

func TestLocalConformance(t *testing.T) {
	storetest.Run(t, func(tb testing.TB) store.Store {
		s, err := store.NewLocal(tb.TempDir())
		if err != nil {
			tb.Fatal(err)
		}
		return s
	})
}

// TestLocalLayout: what an operator finds in the folder.
func TestLocalLayout(t *testing.T) {
	dir := t.TempDir()
	s, err := store.NewLocal(dir)
	require.NoError(t, err)
	ctx := t.Context()
	etag, err := s.Put(ctx, "push/1f2e/state", []byte(`{"phase":"upload"}`), store.PutOptions{})
	require.NoError(t, err)
	_, err = s.Put(ctx, "push/1f2e", []byte("manifest"), store.PutOptions{})
	require.NoError(t, err)

	raw, err := os.ReadFile(filepath.Join(dir, "push+", "1f2e+", "state"))
	require.NoError(t, err)
	require.Equal(t, "grobj1 "+string(etag)+"\n"+`{"phase":"upload"}`, string(raw))
	raw, err = os.ReadFile(filepath.Join(dir, "push+", "1f2e"))
	require.NoError(t, err)
	require.True(t, strings.HasSuffix(string(raw), "\nmanifest"), "%q", raw)
	fi, err := os.Stat(filepath.Join(dir, "push+", "1f2e+", "state"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "objects are private to the server's user")

	// Nothing is left in .tmp, and deleting the last object of a folder
	// removes the folders it leaves empty.
	tmp, err := os.ReadDir(filepath.Join(dir, ".tmp"))
	require.NoError(t, err)
	require.Empty(t, tmp)
	require.NoError(t, s.Delete(ctx, "push/1f2e/state"))
	_, err = os.Stat(filepath.Join(dir, "push+", "1f2e+"))
	require.ErrorIs(t, err, os.ErrNotExist)
	_, err = os.Stat(filepath.Join(dir, "push+", "1f2e"))
	require.NoError(t, err, "a sibling object stays")
}

// TestLocalForeignFiles: files that the store did not write are not
// listed, and reading one says what is wrong.
func TestLocalForeignFiles(t *testing.T) {
	dir := t.TempDir()
	s, err := store.NewLocal(dir)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("hello"), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "bad name"), []byte("x"), 0o600))
	require.NoError(t, os.Mkdir(filepath.Join(dir, "plain-dir"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "plain-dir", "x"), []byte("x"), 0o600))
	_, err = s.Put(t.Context(), "real", []byte("r"), store.PutOptions{})
	require.NoError(t, err)

	var listed []string
	require.NoError(t, s.List(t.Context(), "", func(i store.Info) error {
		listed = append(listed, i.Key)
		return nil
	}))
	require.Equal(t, []string{"real"}, listed)
	_, _, err = s.Get(t.Context(), "notes.txt", nil)
	require.ErrorContains(t, err, "not an object of this store")
}

// TestLocalStaleTmp: a write that a dead process prepared and never
// committed is removed when the store is opened again; a young one (maybe
// another live process's) stays.
func TestLocalStaleTmp(t *testing.T) {
	dir := t.TempDir()
	_, err := store.NewLocal(dir)
	require.NoError(t, err)
	old := filepath.Join(dir, ".tmp", "put-old")
	young := filepath.Join(dir, ".tmp", "put-young")
	require.NoError(t, os.WriteFile(old, []byte("x"), 0o600))
	require.NoError(t, os.WriteFile(young, []byte("x"), 0o600))
	past := time.Now().Add(-2 * time.Hour)
	require.NoError(t, os.Chtimes(old, past, past))
	_, err = store.NewLocal(dir)
	require.NoError(t, err)
	_, err = os.Stat(old)
	require.ErrorIs(t, err, os.ErrNotExist)
	_, err = os.Stat(young)
	require.NoError(t, err)
}

// TestLocalAcrossProcesses: processes sharing one folder race to create
// a key (exactly one wins) and increment a counter by compare-and-swap
// (no increment lost). Each child is this test binary (TestMain).
func TestLocalAcrossProcesses(t *testing.T) {
	const procs, each = 4, 15
	dir := t.TempDir()
	s, err := store.NewLocal(dir)
	require.NoError(t, err)
	_, err = s.Put(t.Context(), "counter", []byte("0"), store.PutOptions{})
	require.NoError(t, err)

	for _, mode := range []string{"create", "counter"} {
		t.Run(mode, func(t *testing.T) {
			type child struct {
				cmd   *exec.Cmd
				stdin io.WriteCloser
				out   strings.Builder
			}
			children := make([]*child, procs)
			for i := range children {
				c := &child{cmd: exec.Command(os.Args[0], "-test.run=^$")}
				c.cmd.Env = append(os.Environ(),
					"STORETEST_CHILD="+mode,
					"STORETEST_DIR="+dir,
					"STORETEST_ID="+strconv.Itoa(i),
					"STORETEST_EACH="+strconv.Itoa(each))
				c.cmd.Stdout = &c.out
				c.cmd.Stderr = &c.out
				c.stdin, err = c.cmd.StdinPipe()
				require.NoError(t, err)
				require.NoError(t, c.cmd.Start())
				children[i] = c
			}
			// Every child waits for its stdin to close, so that they all
			// start their writes together.
			for _, c := range children {
				c.stdin.Close()
			}
			won := 0
			for i, c := range children {
				err := c.cmd.Wait()
				var exit *exec.ExitError
				switch {
				case err == nil:
					won++
				case errors.As(err, &exit) && exit.ExitCode() == childLost && mode == "create":
				default:
					t.Fatalf("child %d: %v\n%s", i, err, c.out.String())
				}
			}
			switch mode {
			case "create":
				require.Equal(t, 1, won, "processes that created the key")
				got, _, err := s.Get(t.Context(), "created", nil)
				require.NoError(t, err)
				require.Regexp(t, `^child \d$`, string(got))
			case "counter":
				require.Equal(t, procs, won)
				got, _, err := s.Get(t.Context(), "counter", nil)
				require.NoError(t, err)
				require.Equal(t, strconv.Itoa(procs*each), string(got), "increments lost between processes")
			}
		})
	}
}

// childLost is a child's exit code for a create that another process won.
const childLost = 3

func runChild(mode string) int {
	ctx := context.Background()
	s, err := store.NewLocal(os.Getenv("STORETEST_DIR"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	_, _ = io.Copy(io.Discard, os.Stdin) // the start signal
	switch mode {
	case "create":
		_, err := s.Put(ctx, "created", []byte("child "+os.Getenv("STORETEST_ID")), store.PutOptions{IfNoneMatch: true})
		if errors.Is(err, store.ErrPrecondition) {
			return childLost
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	case "counter":
		each, _ := strconv.Atoi(os.Getenv("STORETEST_EACH"))
		for done := 0; done < each; {
			data, etag, err := s.Get(ctx, "counter", nil)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			n, err := strconv.Atoi(string(data))
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			_, err = s.Put(ctx, "counter", []byte(strconv.Itoa(n+1)), store.PutOptions{IfMatch: etag})
			if errors.Is(err, store.ErrPrecondition) {
				continue
			}
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			done++
		}
		return 0
	}
	fmt.Fprintln(os.Stderr, "unknown child mode", mode)
	return 1
}
