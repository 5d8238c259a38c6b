package sidecar

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseDest(t *testing.T) {
	for _, tc := range []struct {
		raw  string
		want Dest
	}{
		{"ssh://box/srv/ws", Dest{Host: "box", Path: "/srv/ws"}},
		{"ssh://me@box:2222/srv/ws", Dest{User: "me", Host: "box", Port: 2222, Path: "/srv/ws"}},
		{"ssh://box/~/ws", Dest{Host: "box", Path: "ws", Home: true}},
		{"ssh://[::1]:22/ws", Dest{Host: "::1", Port: 22, Path: "/ws"}},
		{"box:ws dir", Dest{Host: "box", Path: "ws dir", Home: true}},
		{"me@box:/abs/ws", Dest{User: "me", Host: "box", Path: "/abs/ws"}},
		{"box:~/ws", Dest{Host: "box", Path: "ws", Home: true}},
		{"box:-dash", Dest{Host: "box", Path: "-dash", Home: true}},
		{"[::1]:ws", Dest{Host: "::1", Path: "ws", Home: true}},
		{"/abs/local", Dest{Local: true, Path: "/abs/local"}},
		{"rel/local", Dest{Local: true, Path: "/base/rel/local"}},
		{"./a:b", Dest{Local: true, Path: "/base/a:b"}},
		{"file:///mnt/ws", Dest{Local: true, Path: "/mnt/ws"}},
	} {
		got, err := ParseDest(tc.raw, "/base")
		require.NoError(t, err, tc.raw)
		tc.want.Raw = tc.raw
		require.Equal(t, tc.want, got, tc.raw)
	}
}

func TestParseDestRejects(t *testing.T) {
	for raw, why := range map[string]string{
		"":                   "it is empty",
		"ssh://box":          "no workspace path",
		"ssh://box/":         "no workspace path",
		"ssh://box/~":        "home folder itself",
		"ssh://box:0/x":      "port",
		"ssh://u:pw@box/x":   "passwords",
		"ssh://-oProxy=x/ws": "cannot be in one",
		"box:":               "no workspace path",
		"box:~other/x":       "~user",
		"box:/a\nb":          "line break",
		"box:/a\x00b":        "NUL",
		"ssh://box/x?y=1":    "query",
		"ev'il@box:/x":       "cannot be in one",
	} {
		_, err := ParseDest(raw, "/base")
		require.ErrorContains(t, err, why, "%q", raw)
		require.NotContains(t, err.Error(), "\n")
	}
}

func TestPathWordIsOneInertWord(t *testing.T) {
	for _, p := range []string{"/x/ws dir it's $(touch pwned) `touch pwned`; x", "-lead", "a\tb"} {
		for _, home := range []bool{false, true} {
			d := Dest{Path: p, Home: home}
			out, err := exec.Command("sh", "-c", "HOME=/h; printf '%s' "+d.PathWord()).Output()
			require.NoError(t, err)
			want := p
			if home {
				want = "/h/" + p
			}
			require.Equal(t, want, string(out))
		}
	}
}

// The scripts must be valid POSIX sh whatever goes into them.
func TestScriptsParse(t *testing.T) {
	d := Dest{Path: "/ws it's $(x) `y`; z", Home: true}
	a := applyArgs{base: strings.Repeat("a", 40), last: strings.Repeat("b", 40), backupRef: "refs/sidecar/backup/x", token: "t"}
	for name, s := range map[string]string{
		"prepare":    prepareScript(d, prepareArgs{format: "sha256", url: "https://example.com/it's.git", want: []string{"abc", ""}, trees: []string{"t"}, force: true}),
		"cleanup":    cleanupScript(d, 2),
		"bundle":     bundleScript(d, "abc", "refs/sidecar/head"),
		"apply":      applyScript(d, a),
		"applyFirst": applyScript(d, applyArgs{base: "a", last: "b", token: "t", applyFirst: true}),
		"bootstrap":  applyScript(d, applyArgs{bootstrap: true, base: "a", token: "t"}),
		"check":      checkScript(d),
		"exec":       execScript(d, "sub dir", []string{"make", "it's", "$(x)"}),
	} {
		out, err := exec.Command("sh", "-n", "-c", s).CombinedOutput()
		require.NoError(t, err, "%s: %s", name, out)
		require.NotContains(t, s, " -C ", name)
	}
}
