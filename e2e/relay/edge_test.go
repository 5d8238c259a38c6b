package relay

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/git-relay/git-relay/internal/gitx"
)

// cmdEdgeUp starts the shipped edge forwarder as a process in front of the
// relay server and points relay.url at it instead of the test proxy:
//
//	edge-up            git-relay-server edge
//	edge-up --vercel   deploy/vercel's function, built the way Vercel's Go
//	                   builder builds it, behind a stand-in for the
//	                   platform's rewrite
//
// It sets EDGE_URL to the edge's base address.
func cmdEdgeUp(ts *testscript.TestScript, neg bool, args []string) {
	if neg {
		ts.Fatalf("unsupported: ! edge-up")
	}
	fset := flag.NewFlagSet("edge-up", flag.ContinueOnError)
	fset.SetOutput(io.Discard)
	vercel := fset.Bool("vercel", false, "run deploy/vercel's function instead of git-relay-server edge")
	if err := fset.Parse(args); err != nil || fset.NArg() > 0 {
		ts.Fatalf("usage: edge-up [--vercel] (%v)", err)
	}
	st := getState(ts)
	st.mu.Lock()
	server := st.server
	st.mu.Unlock()
	if server == nil {
		ts.Fatalf("no relay server: run relay-up first")
	}
	env := st.environ(ts)
	var bin string
	var edgeArgs []string
	logName := "edge.log"
	if *vercel {
		bin = buildVercelFunction(ts, filepath.Join(st.work, "vercel-build"))
		env = append(env, "SERVER_URL="+server.url)
		logName = "vercel.log"
	} else {
		bin = lookPath(ts, "git-relay-server")
		edgeArgs = []string{"edge", "--listen", "127.0.0.1:0", "--upstream", server.url}
	}
	p, err := startServer(bin, edgeArgs, env, filepath.Join(st.work, logName))
	ts.Check(err)
	st.mu.Lock()
	st.edges = append(st.edges, p)
	st.mu.Unlock()

	cfg := filepath.Join(ts.Getenv("HOME"), ".gitconfig")
	_, err = gitx.Repo{Env: env}.Run(context.Background(), "config", "--file", cfg, "relay.url", p.url+"/api/game")
	ts.Check(err)
	ts.Setenv("EDGE_URL", p.url)
	ts.Logf("edge %s in front of relay %s", p.url, server.url)
}

// repoRoot is the module's root folder (the tests run in e2e/relay).
func repoRoot(ts *testscript.TestScript) string {
	wd, err := os.Getwd()
	ts.Check(err)
	root := filepath.Join(wd, "..", "..")
	if _, err := os.Stat(filepath.Join(root, "deploy", "vercel", "vercel.json")); err != nil {
		ts.Fatalf("cannot find deploy/vercel from %s: %v", wd, err)
	}
	return root
}

// vercelConfig is the part of vercel.json the build reads.
type vercelConfig struct {
	Functions map[string]struct {
		MaxDuration int `json:"maxDuration"`
	} `json:"functions"`
	Rewrites []struct {
		Source      string `json:"source"`
		Destination string `json:"destination"`
	} `json:"rewrites"`
}

// buildVercelFunction builds deploy/vercel's function in dir as Vercel's
// Go builder does (@vercel/go: the project's go.mod renamed to module
// "handler" with a replace of its old path onto itself, the handler renamed
// to Handler_api_edge_go, a generated main package, `go mod tidy`, `go
// build`), from a copy holding only what a deployment uploads. The
// generated main serves the handler over net/http, where Vercel's would
// start its Lambda bridge, and plays the platform's rewrite: it keeps the
// path the client asked for and adds the matched path to the query, as
// Vercel does for /api/game/:edgepath*. It returns the binary.
func buildVercelFunction(ts *testscript.TestScript, dir string) string {
	root := repoRoot(ts)
	src := filepath.Join(root, "deploy", "vercel")
	proj := filepath.Join(dir, "deploy", "vercel")

	// The parent module, as the replace in deploy/vercel/go.mod finds it.
	copyFile(ts, filepath.Join(root, "go.mod"), filepath.Join(dir, "go.mod"))
	copyFile(ts, filepath.Join(root, "go.sum"), filepath.Join(dir, "go.sum"))
	goFiles, err := filepath.Glob(filepath.Join(root, "edge", "*.go"))
	ts.Check(err)
	for _, f := range goFiles {
		if !strings.HasSuffix(f, "_test.go") {
			copyFile(ts, f, filepath.Join(dir, "edge", filepath.Base(f)))
		}
	}
	for _, f := range []string{"go.mod", "go.sum", "vercel.json", "api/edge.go"} {
		copyFile(ts, filepath.Join(src, f), filepath.Join(proj, f))
	}

	// vercel.json and the function agree.
	var cfg vercelConfig
	ts.Check(json.Unmarshal([]byte(ts.ReadFile(filepath.Join(proj, "vercel.json"))), &cfg))
	fn, ok := cfg.Functions["api/edge.go"]
	if !ok || fn.MaxDuration < 60 {
		ts.Fatalf("vercel.json: want functions[\"api/edge.go\"].maxDuration of at least 60 s (the helper waits 60 s for an answer), got %+v", cfg.Functions)
	}
	param := ""
	for _, rw := range cfg.Rewrites {
		if m := regexp.MustCompile(`^/api/game/:([A-Za-z_]+)\*$`).FindStringSubmatch(rw.Source); m != nil && rw.Destination == "/api/edge" {
			param = m[1]
		}
	}
	handler := ts.ReadFile(filepath.Join(proj, "api", "edge.go"))
	if param == "" || !strings.Contains(handler, fmt.Sprintf("pathParam = %q", param)) {
		ts.Fatalf("vercel.json rewrites /api/game/:%s* to /api/edge, but api/edge.go does not strip %q", param, param)
	}
	rootMod := ts.ReadFile(filepath.Join(root, "go.mod"))
	projMod := ts.ReadFile(filepath.Join(proj, "go.mod"))
	goLine := regexp.MustCompile(`(?m)^go \S+$`)
	if goLine.FindString(rootMod) != goLine.FindString(projMod) {
		ts.Fatalf("deploy/vercel/go.mod says %q, the repository %q: keep them equal", goLine.FindString(projMod), goLine.FindString(rootMod))
	}

	// What @vercel/go does to the project before building it.
	renamed := regexp.MustCompile(` Handler\b`).ReplaceAllString(handler, " Handler_api_edge_go")
	ts.Check(os.WriteFile(filepath.Join(proj, "api", "edge.go"), []byte(renamed), 0o644))
	oldModule := regexp.MustCompile(`(?m)^module\s+(\S+)$`).FindStringSubmatch(projMod)[1]
	mod := regexp.MustCompile(`(?m)^module\s+.+$`).ReplaceAllString(projMod, "module handler")
	mod += fmt.Sprintf("require %s v0.0.0-unpublished\nreplace %s => ./\n", oldModule, oldModule)
	ts.Check(os.WriteFile(filepath.Join(proj, "go.mod"), []byte(mod), 0o644))
	main := strings.ReplaceAll(vercelMain, "PARAM", param)
	ts.Check(os.WriteFile(filepath.Join(proj, "main__vc__go__.go"), []byte(main), 0o644))

	bin := filepath.Join(dir, "bootstrap")
	goEnv := append(os.Environ(), "GOFLAGS=-mod=mod", "GOPROXY=off", "GOSUMDB=off", "GOWORK=off", "GOTOOLCHAIN=local", "CGO_ENABLED=0")
	for _, args := range [][]string{{"mod", "tidy"}, {"build", "-o", bin, "main__vc__go__.go"}} {
		cmd := exec.Command("go", args...)
		cmd.Dir = proj
		cmd.Env = goEnv
		if out, err := cmd.CombinedOutput(); err != nil {
			ts.Fatalf("go %s in a copy of deploy/vercel, as Vercel builds it: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	return bin
}

// vercelMain stands in for the main package Vercel generates around the
// handler. PARAM is the rewrite's path parameter.
const vercelMain = `package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"

	api "handler/api"
)

func main() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "vercel stand-in: listening on http://%s\n", ln.Addr())
	platform := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The rewrite /api/game/:PARAM* -> /api/edge keeps the path and
		// adds what it matched to the query; the platform adds headers.
		if rest, ok := strings.CutPrefix(r.URL.Path, "/api/game/"); ok {
			q := "PARAM=" + url.QueryEscape(rest)
			if r.URL.RawQuery != "" {
				q = r.URL.RawQuery + "&" + q
			}
			r.URL.RawQuery = q
		}
		r.Header.Set("X-Vercel-Id", "fra1::stand-in")
		r.Header.Set("X-Vercel-Oidc-Token", "not-for-the-relay")
		api.Handler_api_edge_go(w, r)
	})
	srv := &http.Server{Handler: platform}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		<-ctx.Done()
		_ = srv.Shutdown(context.Background())
	}()
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
`

func copyFile(ts *testscript.TestScript, from, to string) {
	b, err := os.ReadFile(from)
	ts.Check(err)
	ts.Check(os.MkdirAll(filepath.Dir(to), 0o755))
	ts.Check(os.WriteFile(to, b, 0o644))
}
