package sidecar

import (
	"os"
	"path/filepath"
	"testing"
)

// TestMain makes this test binary answer as git-sidecar when started
// under that name, as the commands under test start the background
// processes they leave (a kept connection's holder, the hooks' worker):
// without it, such a start would run this package's tests again.
func TestMain(m *testing.M) {
	if filepath.Base(os.Args[0]) == "git-sidecar" {
		os.Exit(Main())
	}
	os.Exit(m.Run())
}
