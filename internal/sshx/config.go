package sshx

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/kevinburke/ssh_config"
)

// resolved is a Target after ~/.ssh/config.
type resolved struct {
	alias, hostName, user string
	port                  int
	// identityFiles are the keys to offer; defaultIdentities says they
	// are OpenSSH's defaults rather than IdentityFile lines.
	identityFiles     []string
	defaultIdentities bool
	identitiesOnly    bool
	certificateFiles  []string
	// knownHostsFiles are the user's files (the first one records new
	// keys); globalKnownHostsFiles are only read.
	knownHostsFiles       []string
	globalKnownHostsFiles []string
	acceptNew             bool
	timeout               time.Duration
	proxyJump             string
	proxyCommand          string
	aliveInterval         time.Duration
	aliveCountMax         int
	forwardAgent          bool
	// source says where the settings came from, for messages.
	source string
}

func homeDir(o Options) string {
	if o.Home != "" {
		return o.Home
	}
	if h, err := os.UserHomeDir(); err == nil {
		return h
	}
	return "/"
}

func localUser() string {
	if u := os.Getenv("USER"); u != "" {
		return u
	}
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return "root"
}

// passwdHome is the home folder of the passwd entry, which is where
// OpenSSH looks for ~/.ssh whatever $HOME says.
func passwdHome() string {
	if u, err := user.Current(); err == nil {
		return u.HomeDir
	}
	return ""
}

// sshBinary says which ssh resolves the configuration: "" for none.
func sshBinary(o Options) string {
	switch o.SSH {
	case "none":
		return ""
	case "":
		p, err := exec.LookPath("ssh")
		if err != nil {
			return ""
		}
		return p
	default:
		return o.SSH
	}
}

// settings are configuration values by lower-case keyword, in the order
// they apply (the first one wins for single-valued keywords), as `ssh -G`
// prints them.
type settings map[string][]string

func (s settings) get(k string) string {
	if v := s[k]; len(v) > 0 {
		return strings.TrimSpace(v[0])
	}
	return ""
}

// resolve applies the SSH configuration to t. With an ssh binary, OpenSSH
// itself evaluates it (`ssh -G`: Match, Include, canonicalisation, tokens);
// without one, the user's ~/.ssh/config is read by our own parser.
func resolve(ctx context.Context, t Target, o Options, logf func(string, ...any)) (resolved, error) {
	home := homeDir(o)
	if bin := sshBinary(o); bin != "" {
		s, err := sshG(ctx, bin, t, home)
		if err != nil {
			return resolved{}, err
		}
		r, err := fromSettings(t, o, s, true)
		r.source = "ssh -G " + t.Host
		return r, err
	}
	cfgPath := filepath.Join(home, ".ssh", "config")
	s, err := readConfigFallback(cfgPath, home, t, logf)
	if err != nil {
		return resolved{}, err
	}
	r, err := fromSettings(t, o, s, false)
	r.source = cfgPath
	return r, err
}

// sshG runs `ssh -G` for t. OpenSSH reads ~/.ssh/config from the passwd
// entry's home, not $HOME; when the two differ (tests, sudo, containers)
// we name our $HOME's file explicitly so that the user's HOME is honoured
// the same way for every tool here.
func sshG(ctx context.Context, bin string, t Target, home string) (settings, error) {
	args := []string{"-G"}
	if !sameDir(home, passwdHome()) {
		cfg := filepath.Join(home, ".ssh", "config")
		if _, err := os.Stat(cfg); err == nil {
			args = append(args, "-F", cfg)
		} else {
			args = append(args, "-F", "none")
		}
	}
	if t.User != "" {
		args = append(args, "-l", t.User)
	}
	if t.Port != 0 {
		args = append(args, "-p", strconv.Itoa(t.Port))
	}
	args = append(args, "--", t.Host)
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := sshMessage(stderr.String())
		if msg == "" {
			msg = err.Error()
		}
		return nil, fmt.Errorf("resolve ssh host %q with `ssh -G`: %s", t.Host, msg)
	}
	return parseSSHG(stdout.String()), nil
}

// parseSSHG reads the "keyword value" lines that `ssh -G` prints.
func parseSSHG(out string) settings {
	s := settings{}
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		k, v, _ := strings.Cut(strings.TrimSpace(sc.Text()), " ")
		if k == "" {
			continue
		}
		k = strings.ToLower(k)
		s[k] = append(s[k], strings.TrimSpace(v))
	}
	return s
}

func sameDir(a, b string) bool {
	if a == "" || b == "" {
		return false
	}
	if a == b {
		return true
	}
	ra, err1 := filepath.EvalSymlinks(a)
	rb, err2 := filepath.EvalSymlinks(b)
	return err1 == nil && err2 == nil && ra == rb
}

// openSSHDefaultIdentities is what `ssh -G` lists when no IdentityFile
// applies.
var openSSHDefaultIdentities = []string{
	"~/.ssh/id_rsa", "~/.ssh/id_ecdsa", "~/.ssh/id_ecdsa_sk", "~/.ssh/id_ed25519",
	"~/.ssh/id_ed25519_sk", "~/.ssh/id_xmss", "~/.ssh/id_dsa",
}

// fromSettings turns configuration values into a resolved target. fromG
// says the values come from `ssh -G`, which has already applied the
// command line (user, port) and filled in OpenSSH's defaults.
func fromSettings(t Target, o Options, s settings, fromG bool) (resolved, error) {
	home := homeDir(o)
	r := resolved{alias: t.Host, hostName: t.Host, user: t.User, port: t.Port, timeout: o.Timeout, acceptNew: o.AcceptNew, aliveCountMax: 3}
	if v := s.get("hostname"); v != "" {
		r.hostName = strings.ReplaceAll(strings.ReplaceAll(v, "%h", t.Host), "%%", "%")
	}
	if v := s.get("user"); v != "" && (fromG || r.user == "") {
		r.user = v
	}
	if r.user == "" {
		r.user = localUser()
	}
	if v := s.get("port"); v != "" && (fromG || r.port == 0) {
		p, err := strconv.Atoi(v)
		if err != nil || p <= 0 || p > 65535 {
			return r, fmt.Errorf("ssh config: Port %q for host %q is not a port number", v, t.Host)
		}
		r.port = p
	}
	if r.port == 0 {
		r.port = 22
	}
	tokens := map[byte]string{
		'%': "%", 'd': home, 'h': r.hostName, 'n': t.Host, 'p': strconv.Itoa(r.port),
		'r': r.user, 'u': localUser(), 'i': strconv.Itoa(os.Getuid()),
	}
	if hn, err := os.Hostname(); err == nil {
		tokens['L'] = strings.SplitN(hn, ".", 2)[0]
		tokens['l'] = hn
	}
	path := func(p string) string { return expandHome(expandTokens(unquote(p), tokens), home) }

	ids := s["identityfile"]
	if fromG && equalStrings(ids, openSSHDefaultIdentities) {
		ids = nil
	}
	for _, f := range ids {
		r.identityFiles = append(r.identityFiles, path(f))
	}
	if len(r.identityFiles) == 0 {
		r.defaultIdentities = true
		for _, n := range []string{"id_ed25519", "id_ecdsa", "id_rsa"} {
			r.identityFiles = append(r.identityFiles, filepath.Join(home, ".ssh", n))
		}
	}
	r.identitiesOnly = isYes(s.get("identitiesonly"))
	for _, f := range s["certificatefile"] {
		r.certificateFiles = append(r.certificateFiles, path(f))
	}

	// `ssh -G` prints the known hosts files with ~ already expanded to the
	// passwd home; when $HOME differs, the user's HOME is the one we mean.
	pwHome := passwdHome()
	relocate := func(p string) string {
		if fromG && pwHome != "" && !sameDir(home, pwHome) {
			if rest, ok := strings.CutPrefix(p, filepath.Join(pwHome, ".ssh")+"/"); ok {
				return filepath.Join(home, ".ssh", rest)
			}
		}
		return p
	}
	for _, line := range s["userknownhostsfile"] {
		for _, w := range strings.Fields(line) {
			if strings.EqualFold(w, "none") {
				continue
			}
			r.knownHostsFiles = append(r.knownHostsFiles, relocate(path(w)))
		}
	}
	if len(r.knownHostsFiles) == 0 {
		r.knownHostsFiles = []string{filepath.Join(home, ".ssh", "known_hosts"), filepath.Join(home, ".ssh", "known_hosts2")}
	}
	for _, line := range s["globalknownhostsfile"] {
		for _, w := range strings.Fields(line) {
			if !strings.EqualFold(w, "none") {
				r.globalKnownHostsFiles = append(r.globalKnownHostsFiles, path(w))
			}
		}
	}
	if strings.EqualFold(s.get("stricthostkeychecking"), "accept-new") {
		r.acceptNew = true
	}
	if r.timeout == 0 {
		if v := s.get("connecttimeout"); v != "" && v != "none" {
			if n, err := strconv.Atoi(v); err == nil && n > 0 {
				r.timeout = time.Duration(n) * time.Second
			}
		}
	}
	if r.timeout == 0 {
		r.timeout = 20 * time.Second
	}
	if v := s.get("proxyjump"); v != "" && !strings.EqualFold(v, "none") {
		r.proxyJump = v
	}
	if v := s.get("proxycommand"); v != "" && !strings.EqualFold(v, "none") {
		r.proxyCommand = v
	}
	if v := s.get("serveraliveinterval"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return r, fmt.Errorf("ssh config: ServerAliveInterval %q for host %q is not a number of seconds", v, t.Host)
		}
		r.aliveInterval = time.Duration(n) * time.Second
	}
	if v := s.get("serveralivecountmax"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return r, fmt.Errorf("ssh config: ServerAliveCountMax %q for host %q is not a number", v, t.Host)
		}
		r.aliveCountMax = n
	}
	if v := s.get("forwardagent"); v != "" && !strings.EqualFold(v, "no") {
		r.forwardAgent = true
	}
	return r, nil
}

func isYes(v string) bool {
	return strings.EqualFold(v, "yes") || strings.EqualFold(v, "true")
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func unquote(s string) string {
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		return s[1 : len(s)-1]
	}
	return s
}

// expandTokens replaces OpenSSH's %-tokens that tokens knows; unknown
// ones are left as they are.
func expandTokens(s string, tokens map[byte]string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+1 < len(s) {
			if v, ok := tokens[s[i+1]]; ok {
				b.WriteString(v)
				i++
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func expandHome(p, home string) string {
	if p == "~" {
		return home
	}
	if rest, ok := strings.CutPrefix(p, "~/"); ok {
		return filepath.Join(home, rest)
	}
	return p
}

// readConfigFallback reads cfgPath with our own parser, for machines
// without an ssh binary. The parser knows Host blocks but not every Match
// criterion, so the file is first rewritten for this one host: Include
// lines are inlined, and every Match block is evaluated for t and turned
// into "Host *" or a block that matches nothing. A criterion we cannot
// evaluate (exec, canonical, final, localnetwork, tagged) is an error only
// when its block could apply to t: a Match for another host never breaks
// this one.
func readConfigFallback(cfgPath, home string, t Target, logf func(string, ...any)) (settings, error) {
	text, err := rewriteConfig(cfgPath, home, t, logf, 0)
	if errors.Is(err, os.ErrNotExist) {
		return settings{}, nil
	}
	if err != nil {
		return nil, err
	}
	cfg, err := ssh_config.DecodeBytes(text)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", cfgPath, err)
	}
	s := settings{}
	for _, k := range []string{"hostname", "user", "port", "identitiesonly", "proxyjump", "proxycommand",
		"serveraliveinterval", "serveralivecountmax", "stricthostkeychecking", "forwardagent", "connecttimeout"} {
		if v, _ := cfg.Get(t.Host, k); strings.TrimSpace(v) != "" {
			s[k] = []string{strings.TrimSpace(v)}
		}
	}
	for _, k := range []string{"identityfile", "certificatefile", "userknownhostsfile", "globalknownhostsfile"} {
		if v, _ := cfg.GetAll(t.Host, k); len(v) > 0 {
			s[k] = v
		}
	}
	return s, nil
}

// rewriteConfig returns the text of one configuration file prepared for
// the fallback parser (see readConfigFallback).
func rewriteConfig(file, home string, t Target, logf func(string, ...any), depth int) ([]byte, error) {
	if depth > 16 {
		return nil, fmt.Errorf("read %s: Include nested too deeply", file)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		if depth == 0 && errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	var out bytes.Buffer
	header := ""
	for n, line := range strings.Split(string(b), "\n") {
		kw, rest := splitDirective(line)
		switch strings.ToLower(kw) {
		case "host":
			header = "Host " + rest
			out.WriteString(header + "\n")
		case "match":
			applies, err := evalMatch(rest, t)
			if err != nil {
				return nil, fmt.Errorf("%s:%d: %w", file, n+1, err)
			}
			if applies {
				header = "Host *"
			} else {
				header = "Host !*"
			}
			out.WriteString(header + "\n")
		case "include":
			for _, pat := range configWords(rest) {
				p := expandHome(pat, home)
				if !filepath.IsAbs(p) {
					p = filepath.Join(home, ".ssh", p)
				}
				matches, err := filepath.Glob(p)
				if err != nil {
					return nil, fmt.Errorf("%s:%d: Include %q: %w", file, n+1, pat, err)
				}
				sort.Strings(matches)
				for _, m := range matches {
					inc, err := rewriteConfig(m, home, t, logf, depth+1)
					if err != nil {
						return nil, err
					}
					out.Write(inc)
					out.WriteString("\n")
					// An included file may open blocks of its own; what
					// follows the Include belongs to ours again.
					if header != "" {
						out.WriteString(header + "\n")
					}
				}
			}
		default:
			out.WriteString(line + "\n")
		}
	}
	return out.Bytes(), nil
}

// splitDirective splits a configuration line into its keyword and the
// rest ("Key value", "Key=value", "Key = value").
func splitDirective(line string) (string, string) {
	s := strings.TrimSpace(line)
	if s == "" || s[0] == '#' {
		return "", ""
	}
	i := strings.IndexAny(s, " \t=")
	if i < 0 {
		return s, ""
	}
	kw, rest := s[:i], strings.TrimLeft(s[i:], " \t")
	rest = strings.TrimPrefix(rest, "=")
	return kw, strings.TrimSpace(rest)
}

// configWords splits arguments the way ssh_config does: on blanks, with
// double quotes grouping.
func configWords(s string) []string {
	var words []string
	var cur strings.Builder
	inQuote, have := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			have = true
		case (r == ' ' || r == '\t') && !inQuote:
			if have {
				words = append(words, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		words = append(words, cur.String())
	}
	return words
}

// evalMatch decides whether a Match line applies to t. The criteria are
// ANDed, so one that is false settles it, whatever the others; a
// criterion we cannot evaluate matters only when all the others hold.
func evalMatch(args string, t Target) (bool, error) {
	words := configWords(args)
	if len(words) == 0 {
		return false, errors.New("a Match line needs a criterion")
	}
	user := t.User
	if user == "" {
		user = localUser()
	}
	applies := true
	var unknown []string
	for i := 0; i < len(words); i++ {
		crit := strings.ToLower(words[i])
		neg := strings.HasPrefix(crit, "!")
		crit = strings.TrimPrefix(crit, "!")
		var arg string
		switch crit {
		case "all", "canonical", "final":
		default:
			if i+1 >= len(words) {
				return false, fmt.Errorf("the Match criterion %q needs an argument", crit)
			}
			i++
			arg = words[i]
		}
		var ok bool
		switch crit {
		case "all":
			ok = true
		case "host", "originalhost":
			// Our parser knows only the name given, not the name after
			// HostName or canonicalisation.
			ok = matchPatternList(arg, t.Host)
		case "user":
			ok = matchPatternList(arg, user)
		case "localuser":
			ok = matchPatternList(arg, localUser())
		default:
			unknown = append(unknown, "Match "+words[i-boolToInt(arg != "")])
			continue
		}
		if ok == neg {
			applies = false
		}
	}
	if applies && len(unknown) > 0 {
		return false, fmt.Errorf("%s cannot be evaluated without OpenSSH's ssh: install it (apt-get install openssh-client) so that `ssh -G` reads the configuration", unknown[0])
	}
	return applies, nil
}

func boolToInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// matchPatternList matches s against a comma-separated ssh_config pattern
// list: a negated pattern that matches rejects, otherwise any match
// accepts.
func matchPatternList(list, s string) bool {
	found := false
	for _, p := range strings.Split(list, ",") {
		neg := strings.HasPrefix(p, "!")
		p = strings.TrimPrefix(p, "!")
		if ok, _ := filepath.Match(p, s); ok || strings.EqualFold(p, s) {
			if neg {
				return false
			}
			found = true
		}
	}
	return found
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		l := strings.TrimSpace(lines[i])
		if l != "" && !strings.HasPrefix(l, "Pseudo-terminal will not be allocated") {
			return l
		}
	}
	return ""
}

// sshMessage is ssh's complaint on one line, without its routine notices.
func sshMessage(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		l = strings.TrimSpace(l)
		if l != "" && !strings.HasPrefix(l, "Pseudo-terminal will not be allocated") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "; ")
}
