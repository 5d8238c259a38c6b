package cluster

import (
	"os"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/git-relay/git-relay/helper"
	"github.com/git-relay/git-relay/server"
)

// TestMain turns the test binary into git-remote-relay or git-relay-server
// when it runs under that name: testscript.Main puts both names on the
// PATH of the whole test process, so the instances are this binary and
// `git push relay::…` finds the real helper.
func TestMain(m *testing.M) {
	// Under -race every helper and server process would otherwise sleep a
	// second on exit.
	if os.Getenv("GORACE") == "" {
		os.Setenv("GORACE", "atexit_sleep_ms=0")
	}
	testscript.Main(m, map[string]func(){
		"git-remote-relay": func() { os.Exit(helper.Main()) },
		"git-relay-server": func() { os.Exit(server.Main()) },
	})
}
