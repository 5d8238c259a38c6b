package sidecar

import (
	"fmt"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/git-relay/git-relay/internal/sshx"
)

// Dest is where a sidecar's workspace lives.
type Dest struct {
	// Raw is the DEST as configured.
	Raw string
	// Local is a path on this machine, reached with sh rather than SSH.
	Local bool
	User  string
	Host  string
	Port  int
	// Path is absolute, or relative to the remote user's home (Home set).
	Path string
	Home bool
}

// errBadDest wraps every DEST parsing failure with the accepted forms.
func errBadDest(raw, why string) error {
	return fmt.Errorf("bad DEST %q: %s (use ssh://[user@]host[:port]/path, [user@]host:path or a local path)", raw, why)
}

// ParseDest reads the three DEST forms. A local path is made absolute
// against base.
func ParseDest(raw, base string) (Dest, error) {
	d := Dest{Raw: raw}
	if raw == "" {
		return d, errBadDest(raw, "it is empty")
	}
	if strings.ContainsAny(raw, "\x00\n\r") {
		return d, errBadDest(raw, "it contains a NUL or line break")
	}
	switch {
	case strings.HasPrefix(raw, "ssh://"):
		u, err := url.Parse(raw)
		if err != nil {
			return d, errBadDest(raw, err.Error())
		}
		if u.User != nil {
			d.User = u.User.Username()
			if _, has := u.User.Password(); has {
				return d, errBadDest(raw, "passwords in DEST are not supported; use a key")
			}
		}
		d.Host = u.Hostname()
		if p := u.Port(); p != "" {
			n, err := strconv.Atoi(p)
			if err != nil || n <= 0 || n > 65535 {
				return d, errBadDest(raw, "the port is not a number from 1 to 65535")
			}
			d.Port = n
		}
		if u.RawQuery != "" || u.Fragment != "" {
			return d, errBadDest(raw, "it has a query or fragment")
		}
		p := u.Path
		switch {
		case p == "" || p == "/":
			return d, errBadDest(raw, "it names no workspace path")
		case p == "/~" || p == "/~/":
			return d, errBadDest(raw, "the workspace cannot be the home folder itself")
		case strings.HasPrefix(p, "/~/"):
			d.Path, d.Home = p[3:], true
		default:
			d.Path = p
		}
	case strings.HasPrefix(raw, "file://"):
		d.Local = true
		d.Path = strings.TrimPrefix(raw, "file://")
	case isSCPLike(raw):
		i := scpColon(raw)
		hostPart, p := raw[:i], raw[i+1:]
		if at := strings.LastIndex(hostPart, "@"); at >= 0 {
			d.User, hostPart = hostPart[:at], hostPart[at+1:]
		}
		d.Host = strings.TrimSuffix(strings.TrimPrefix(hostPart, "["), "]")
		switch {
		case p == "" || p == "~" || p == "~/":
			return d, errBadDest(raw, "it names no workspace path after ':'")
		case strings.HasPrefix(p, "~/"):
			d.Path, d.Home = p[2:], true
		case strings.HasPrefix(p, "~"):
			return d, errBadDest(raw, "~user paths are not supported; use an absolute path")
		case strings.HasPrefix(p, "/"):
			d.Path = p
		default:
			d.Path, d.Home = p, true
		}
	default:
		d.Local = true
		d.Path = raw
	}
	if d.Local {
		if d.Path == "" {
			return d, errBadDest(raw, "it names no path")
		}
		if !filepath.IsAbs(d.Path) {
			d.Path = filepath.Join(base, d.Path)
		}
		d.Path = filepath.Clean(d.Path)
		return d, nil
	}
	if d.Host == "" {
		return d, errBadDest(raw, "it names no host")
	}
	if strings.HasPrefix(d.Host, "-") || strings.HasPrefix(d.User, "-") || strings.ContainsAny(d.Host+d.User, " \t'\"\\/@") {
		return d, errBadDest(raw, "the host or user name has characters that cannot be in one")
	}
	return d, nil
}

// isSCPLike follows git's rule: a colon before the first slash makes
// host:path; anything else is a local path.
func isSCPLike(s string) bool {
	i := scpColon(s)
	if i <= 0 {
		return false
	}
	slash := strings.Index(s, "/")
	return slash < 0 || i < slash
}

func scpColon(s string) int {
	if strings.HasPrefix(s, "[") {
		if j := strings.Index(s, "]:"); j > 0 {
			return j + 1
		}
	}
	return strings.Index(s, ":")
}

// Target is the SSH target of a remote DEST.
func (d Dest) Target() sshx.Target {
	return sshx.Target{Host: d.Host, User: d.User, Port: d.Port}
}

// PathWord is the workspace path as one sh word.
func (d Dest) PathWord() string {
	if d.Home {
		return `"$HOME"/` + sshx.Quote(d.Path)
	}
	return sshx.Quote(d.Path)
}

// Display is DEST for humans.
func (d Dest) Display() string {
	if d.Local {
		return d.Path
	}
	return d.Raw
}
