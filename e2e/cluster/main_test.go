package cluster

import (
	"flag"
	"os"
	"path/filepath"
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
	commands := map[string]func(){
		"git-remote-relay": func() { os.Exit(helper.Main()) },
		"git-relay-server": func() { os.Exit(server.Main()) },
	}
	if commands[filepath.Base(os.Args[0])] == nil {
		runAllAtOnce()
	}
	testscript.Main(m, commands)
}

// runAllAtOnce lets every test of the package run at once unless
// -test.parallel says otherwise: each spends most of its time waiting for
// a dead instance's 20 s lease to run out, not on the CPU, so the default
// (GOMAXPROCS, 2 here) would make the package several times slower for
// nothing.
func runAllAtOnce() {
	if !flag.Parsed() {
		flag.Parse()
	}
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.parallel" })
	if !set {
		_ = flag.Set("test.parallel", "8")
	}
}
