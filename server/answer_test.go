package server

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/gittest"
	"github.com/git-relay/git-relay/internal/keyring"
	"github.com/git-relay/git-relay/internal/payload"
	"github.com/git-relay/git-relay/internal/seal"
	"github.com/git-relay/git-relay/internal/wire"
)

func pkt(line string) string { return fmt.Sprintf("%04x%s", len(line)+4, line) }

// TestRequestWants reads the wanted ids of a protocol v2 fetch request,
// and nothing else: not its haves, nor a line that only looks like a want.
func TestRequestWants(t *testing.T) {
	a, b, h := strings.Repeat("a", 40), strings.Repeat("b", 40), strings.Repeat("c", 40)
	req := pkt("command=fetch\n") + pkt("agent=git/2.39.5\n") + "0001" +
		pkt("thin-pack\n") + pkt("want "+a+"\n") + pkt("want "+b+"\n") + pkt("want-ref refs/heads/x\n") +
		pkt("want nothex\n") + pkt("have "+h+"\n") + pkt("done\n") + "0000"
	require.Equal(t, []string{a, b}, requestWants([]byte(req)))
	require.Empty(t, requestWants([]byte(pkt("command=ls-refs\n")+"0001"+pkt("peel\n")+"0000")))
	// A cut request yields what came before the cut.
	require.Equal(t, []string{a}, requestWants([]byte(req[:strings.Index(req, "want "+b)+10])))
}

// read runs a read exchange of kind, with request (none when empty)
// inline, following the exchange follows (none when empty), and returns
// its id and its answer, which must be small enough to come inline.
func (f *fixture) read(t *testing.T, kind, request, follows string) (id, answer string) {
	t.Helper()
	o := wire.Open{V: wire.Version, ID: randomID(16), Kind: kind, Repo: "acme/widgets", Salt: randomID(32),
		MaxBody: f.client.MaxBody, Inline: request != "", Follows: follows}
	raw, err := json.Marshal(o)
	require.NoError(t, err)
	req := wire.Request{Method: "POST", Path: wire.PathOpen, Msg: json.RawMessage(raw)}
	if request != "" {
		salt, _ := hex.DecodeString(o.Salt)
		up, err := seal.New(f.key, keyring.LabelUpload, salt, wire.Hash(raw))
		require.NoError(t, err)
		req.Tail = up.Seal(nil, 0, true, payload.Bytes([]byte(request)))
	}
	var st wire.Status
	tail, err := f.client.Call(t.Context(), req, &st)
	require.NoError(t, err)
	for !wire.Ended(st.Phase) && st.Down == nil {
		tail, err = f.client.Call(t.Context(), wire.Request{Method: "GET", Path: wire.PathStatus, Query: url.Values{"id": {o.ID}, "wait": {"1"}}}, &st)
		require.NoError(t, err)
	}
	require.True(t, st.Down != nil && st.Down.Inline, "%s: %s", st.Phase, st.Message)
	plain, err := payload.Unbytes(tail, 1<<20)
	require.NoError(t, err)
	return o.ID, string(plain)
}

// TestListingFollowsItsCapabilities: the capabilities exchange that
// begins a git command has the mirror refreshed for the listing that
// follows it, which then asks upstream nothing more yet shows upstream as
// it was when the command began. A listing that follows nothing, or an
// exchange this relay has not seen, lists upstream itself.
func TestListingFollowsItsCapabilities(t *testing.T) {
	f := newFixture(t, Config{})
	listings := func() int {
		var m dto.Metric
		require.NoError(t, f.srv.metrics.upstreamListings.Write(&m))
		return int(m.GetCounter().GetValue())
	}
	lsRefs := pkt("command=ls-refs\n") + "0001" + pkt("ref-prefix refs/heads/\n") + "0000"

	caps, _ := f.read(t, wire.KindCaps, "", "")
	_, ls := f.read(t, wire.KindFetch, lsRefs, caps)
	require.Contains(t, ls, f.first+" refs/heads/master")
	require.Equal(t, 1, listings(), "one listing of upstream for the first command")

	// Upstream moves, not through the relay; the next command sees it.
	gittest.Git(t, f.work, "push", "-q", f.upstream, "master")
	caps, _ = f.read(t, wire.KindCaps, "", "")
	_, ls = f.read(t, wire.KindFetch, lsRefs, caps)
	require.Contains(t, ls, f.second+" refs/heads/master")
	require.Equal(t, 2, listings(), "the listing used the refresh its capabilities exchange began")

	for i, follows := range []string{"", randomID(16)} {
		_, ls = f.read(t, wire.KindFetch, lsRefs, follows)
		require.Contains(t, ls, f.second+" refs/heads/master")
		require.Equal(t, 3+i, listings(), "a listing that follows %q lists upstream", follows)
	}
}
