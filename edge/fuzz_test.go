package edge_test

import (
	"errors"
	"net/http"
	"net/url"
	"path"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/edge"
)

// FuzzRoute: whatever request line a client sends, the edge forwards it
// to the relay's host only, to a path that stays under the server prefix
// (or is the probe) once the relay decodes and cleans it, sending the
// path it routed byte for byte, and with the path parameter taken out of
// the query and every other pair kept as it was; anything else it refuses
// with 400, 404 or 405.
func FuzzRoute(f *testing.F) {
	for _, s := range []string{
		"/api/game/x?id=0123&kind=push", "/api/game/x/up?id=abc&i=3&final=1", "/healthz", "/healthz?x=1",
		"/api/game/../healthz", "/api/game/%2e%2e/x", "/api/game/a/%2E/b", "/api/game/a%2F..%2Fb", "/api/game/a%5C..%5Cb",
		"/api/game/a%252e%252e", "/api/game/%zz", "/api/game//x", "/api/game", "/api/gamex", "/",
		"/api/vercel?edgepath=x/up&id=1", "/api/vercel?edgepath=..&edgepath=x", "/api/vercel?edgepath=%2e%2e%2Fx",
		"/api/vercel?edge%70ath=x&a=%zz&b", "/api/game/x?edgepath=../../y&id=1",
	} {
		f.Add("GET", s)
		f.Add("POST", s)
	}
	fw, err := edge.New(edge.Options{Upstream: "http://relay.internal:8080/api/gr/", PathParam: "edgepath"})
	require.NoError(f, err)
	f.Fuzz(func(t *testing.T, method, target string) {
		// As net/http's server reads a request line's target.
		if !strings.HasPrefix(target, "/") {
			return
		}
		u, err := url.ParseRequestURI(target)
		if err != nil {
			return
		}
		r := &http.Request{Method: method, URL: u, Header: http.Header{}, Host: "edge.example"}
		rt, err := fw.Route(r)
		if err != nil {
			var re *edge.RouteError
			require.True(t, errors.As(err, &re), "%v", err)
			require.Contains(t, []int{http.StatusBadRequest, http.StatusNotFound, http.StatusMethodNotAllowed}, re.Status)
			return
		}
		require.Equal(t, "http", rt.URL.Scheme)
		require.Equal(t, "relay.internal:8080", rt.URL.Host)
		require.Nil(t, rt.URL.User)
		if rt.URL.RawPath != "" {
			require.Equal(t, rt.URL.RawPath, rt.URL.EscapedPath(), "the path sent is not the path routed")
		}

		// As the relay reads and cleans what it receives.
		got, err := url.ParseRequestURI(rt.URL.RequestURI())
		require.NoError(t, err, "%q", rt.URL.RequestURI())
		clean := path.Clean(got.Path)
		if clean == edge.HealthPath {
			require.Contains(t, []string{http.MethodGet, http.MethodHead}, method)
		} else {
			require.True(t, strings.HasPrefix(clean+"/", edge.DefaultServerPrefix), "%q reaches %q on the relay", target, clean)
		}

		var orig []string
		if u.RawQuery != "" {
			orig = strings.Split(u.RawQuery, "&")
		}
		i := 0
		if rt.URL.RawQuery != "" {
			for _, pair := range strings.Split(rt.URL.RawQuery, "&") {
				k, _, _ := strings.Cut(pair, "=")
				if uk, err := url.QueryUnescape(k); err == nil {
					require.NotEqual(t, "edgepath", uk, "the path parameter was forwarded")
				}
				for i < len(orig) && orig[i] != pair {
					i++
				}
				require.Less(t, i, len(orig), "pair %q is not the client's", pair)
				i++
			}
		}
	})
}
