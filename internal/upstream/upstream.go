// Package upstream is the relay server's link to the external git host: it
// lists the refs of an upstream repository and pushes a prebuilt pack to it
// as a set of compare-and-swap ref updates, speaking git's pack protocol
// itself (with go-git's packp plumbing for the message formats).
//
// Two kinds of URL are supported. file:///abs/path/x.git runs `git
// receive-pack` and `git upload-pack` on the repository through the gitx
// door, so a folder of bare repositories can stand in for a git host.
// http(s)://host/owner/repo.git speaks smart HTTP directly, streaming the
// pack as a chunked request body so that memory stays flat whatever its
// size, and sending the token as HTTP Basic credentials.
//
// The package does not use go-git's transport clients: its HTTP
// receive-pack buffers the whole pack in memory, and its file transport
// would run git outside the gitx door.
//
// The token never leaves this package except as an HTTP header and, for
// the caller's own git commands, in the environment built by GitEnv; every
// text that came from upstream is passed through Redact.
package upstream

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

var (
	// ErrNotFound means the upstream repository does not exist (a missing
	// path or a folder that is not a repository for file://, HTTP 404 for
	// http). Git hosts also answer 404 when the token may not see the
	// repository.
	ErrNotFound = errors.New("upstream repository not found")
	// ErrAuth means upstream refused our credentials (HTTP 401 or 403).
	ErrAuth = errors.New("upstream refused the credentials")
)

// userAgent starts with "git/" because some hosts (GitHub among them)
// answer smart-HTTP requests only from user agents that do; the rest says
// who we really are, as libgit2 and dulwich do.
const userAgent = "git/2.0 (git-relay)"

// advertiseTimeout bounds the ref advertisement requests, which are small;
// the push itself has no overall timeout, because a large pack takes as
// long as it takes.
const advertiseTimeout = 2 * time.Minute

// Remote is one upstream repository. It is safe for concurrent use.
type Remote struct {
	display string   // the URL as given; it never holds credentials
	path    string   // file: the repository's path
	base    *url.URL // http(s): the repository URL without a trailing slash
	token   string
	secrets []string // the forms of the token that Redact removes
	client  *http.Client
}

// New returns the Remote for rawURL, which is file:///abs/path/x.git or
// http(s)://host/path/repo.git without credentials in it. token ("" for
// none) is sent to an http(s) upstream as Basic credentials for the user
// "x-access-token", as GitHub expects of app and personal tokens.
func New(rawURL, token string) (*Remote, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		// url.Error quotes the whole URL, credentials and all.
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return nil, fmt.Errorf("parse upstream URL: %w", err)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return nil, fmt.Errorf("upstream URL %q must not have a query or fragment", u.Redacted())
	}
	for i := 0; i < len(token); i++ {
		if token[i] <= ' ' || token[i] >= 0x7f {
			return nil, errors.New("upstream token contains spaces or characters that cannot go in an HTTP header")
		}
	}
	if u.Scheme != "file" && u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("upstream URL %q: unsupported scheme %q (want file, http or https)", u.Redacted(), u.Scheme)
	}
	if u.User != nil {
		return nil, fmt.Errorf("upstream URL %q must not contain credentials: pass the token separately", u.Redacted())
	}
	r := &Remote{display: rawURL, token: token}
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return nil, fmt.Errorf("upstream URL %q: file URLs name a local path (file:///abs/path)", rawURL)
		}
		if !path.IsAbs(u.Path) {
			return nil, fmt.Errorf("upstream URL %q: the path must be absolute", rawURL)
		}
		r.path = filepath.Clean(filepath.FromSlash(u.Path))
	case "http", "https":
		if u.Host == "" {
			return nil, fmt.Errorf("upstream URL %q has no host", rawURL)
		}
		base := *u
		base.Path = strings.TrimRight(base.Path, "/")
		base.RawPath = ""
		r.base = &base
		r.client = newHTTPClient()
	}
	if token != "" {
		r.secrets = secretForms(token)
	}
	return r, nil
}

// String returns the URL as given, which holds no secret.
func (r *Remote) String() string { return r.display }

// basicAuth is the Authorization header value for the token.
func (r *Remote) basicAuth() string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte("x-access-token:"+r.token))
}

// secretForms lists every way the token may show up in text: as is, as
// the Basic credentials we send and as the bare token in base64 (in both
// alphabets, padded and not), and escaped for a URL query, path or
// userinfo. Longest first, so that no replacement leaves part of another.
func secretForms(token string) []string {
	forms := map[string]bool{
		token:                  true,
		url.QueryEscape(token): true,
		url.PathEscape(token):  true,
		strings.TrimPrefix(url.UserPassword("x", token).String(), "x:"): true,
	}
	for _, plain := range []string{"x-access-token:" + token, token} {
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
			forms[enc.EncodeToString([]byte(plain))] = true
		}
	}
	var out []string
	for f := range forms {
		if f != "" {
			out = append(out, f)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// Redact removes every form of the token from s.
func (r *Remote) Redact(s string) string {
	for _, f := range r.secrets {
		s = strings.ReplaceAll(s, f, "***")
	}
	return s
}

// GitEnv returns the environment for the caller's own git commands against
// this upstream (`git fetch`, `git ls-remote`): they must never stop to
// ask for a password, must not consult credential helpers (which could
// hold some other identity), and get the token only through the
// environment, never in argv or in the URL. config adds more "key=value"
// settings the same way (GIT_CONFIG_COUNT takes one list, so callers that
// want their own must pass them here).
//
// An empty GIT_ASKPASS is deliberate: git then skips core.askPass and
// SSH_ASKPASS, and with GIT_TERMINAL_PROMPT=0 it fails at once with
// "terminal prompts disabled" instead of prompting.
func (r *Remote) GitEnv(config ...string) []string {
	env := []string{"GIT_TERMINAL_PROMPT=0", "GIT_ASKPASS=", "SSH_ASKPASS="}
	// An empty value resets a multi-valued setting inherited from the
	// global or system config.
	pairs := [][2]string{{"credential.helper", ""}}
	if r.token != "" && r.base != nil {
		pairs = append(pairs,
			[2]string{"http.extraHeader", ""},
			[2]string{"http." + r.base.String() + ".extraHeader", "Authorization: " + r.basicAuth()})
	}
	for _, kv := range config {
		k, v, _ := strings.Cut(kv, "=")
		pairs = append(pairs, [2]string{k, v})
	}
	env = append(env, fmt.Sprintf("GIT_CONFIG_COUNT=%d", len(pairs)))
	for i, p := range pairs {
		env = append(env, fmt.Sprintf("GIT_CONFIG_KEY_%d=%s", i, p[0]), fmt.Sprintf("GIT_CONFIG_VALUE_%d=%s", i, p[1]))
	}
	return env
}

// gitDir finds the repository of a file:// upstream the way git's
// is_git_directory does (HEAD, objects/ and refs/), accepting a bare
// repository or a work tree's .git, so that a missing repository is
// reported as ErrNotFound before any git runs.
func (r *Remote) gitDir() (string, error) {
	for _, dir := range []string{r.path, filepath.Join(r.path, ".git")} {
		if isGitDir(dir) {
			return dir, nil
		}
	}
	if _, err := os.Stat(r.path); errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%w: %s does not exist", ErrNotFound, r.display)
	}
	return "", fmt.Errorf("%w: %s is not a git repository", ErrNotFound, r.display)
}

func isGitDir(dir string) bool {
	for _, name := range []string{"HEAD", "objects", "refs"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			return false
		}
	}
	return true
}

// newHTTPClient has timeouts on every step that should be quick, none on
// the transfer itself, and refuses redirects that would carry the token to
// another host or downgrade to plain HTTP.
func newHTTPClient() *http.Client {
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		TLSHandshakeTimeout:   30 * time.Second,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
		MaxIdleConnsPerHost:   4,
	}
	return &http.Client{
		Transport: tr,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 5 {
				return errors.New("stopped after 5 redirects")
			}
			first := via[0]
			if first.Method != http.MethodGet {
				// A POST cannot be replayed (its body is a stream), and
				// 301/302 would turn it into a GET: let the caller see
				// the redirect as an error instead.
				return http.ErrUseLastResponse
			}
			sameScheme := req.URL.Scheme == first.URL.Scheme || first.URL.Scheme == "http" && req.URL.Scheme == "https"
			if req.URL.Host != first.URL.Host || !sameScheme {
				return fmt.Errorf("upstream redirected to %s, another host; refusing to send the token there", req.URL.Redacted())
			}
			return nil
		},
	}
}
