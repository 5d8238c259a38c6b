package relay

import (
	"os"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/git-relay/git-relay/helper"
	"github.com/git-relay/git-relay/server"
)

// TestMain turns the test binary into git-remote-relay or git-relay-server
// when a script runs it under that name; testscript puts both names on the
// scripts' PATH, so `git push relay::…` finds the real helper.
func TestMain(m *testing.M) {
	// Under -race every helper and server process would otherwise sleep a
	// second on exit, and a script runs dozens of them.
	if os.Getenv("GORACE") == "" {
		os.Setenv("GORACE", "atexit_sleep_ms=0")
	}
	testscript.Main(m, map[string]func(){
		"git-remote-relay": func() { os.Exit(helper.Main()) },
		"git-relay-server": func() { os.Exit(server.Main()) },
	})
}

// TestRelay runs the push scripts (issue 2) and the harness's own checks.
func TestRelay(t *testing.T) {
	testscript.Run(t, params("testdata"))
}

// TestRelayFetch runs the fetch, clone and rest-of-push scripts (issue 4).
func TestRelayFetch(t *testing.T) {
	testscript.Run(t, params("testdata/fetch"))
}

// TestRelayRemote runs the scripts that treat relay:: as a complete git
// remote on real histories: any number of refs, --mirror, tags, shallow
// and partial clones, resume.
func TestRelayRemote(t *testing.T) {
	testscript.Run(t, params("testdata/remote"))
}

// TestRelayCutThrough runs the scripts about pushes that stream into
// upstream while they upload.
func TestRelayCutThrough(t *testing.T) {
	testscript.Run(t, params("testdata/cut"))
}
