package server

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

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
	return f.readOpen(t, wire.Open{Kind: kind, Inline: request != "", Follows: follows}, request)
}

// readOpen is read with the Open o (its kind, and what it says beyond
// the ids, salt and size read fills in).
func (f *fixture) readOpen(t *testing.T, o wire.Open, request string) (id, answer string) {
	t.Helper()
	_, st, tail := f.openRead(t, o, request)
	require.True(t, st.Down != nil && st.Down.Inline, "%s: %s", st.Phase, st.Message)
	plain, err := payload.Unbytes(tail, 1<<20)
	require.NoError(t, err)
	return st.ID, string(plain)
}

// openRead opens a read exchange with o, its ids, salt and (unless o
// has one) size filled in and its request (none when empty) inline, and
// waits for the answer's terms. It returns the Open's bytes, the status
// and the tail of the reply that brought it.
func (f *fixture) openRead(t *testing.T, o wire.Open, request string) (raw []byte, st wire.Status, tail []byte) {
	t.Helper()
	o.V, o.ID, o.Repo, o.Salt = wire.Version, randomID(16), "acme/widgets", randomID(32)
	if o.MaxBody == 0 {
		o.MaxBody = f.client.MaxBody
	}
	raw, err := json.Marshal(o)
	require.NoError(t, err)
	req := wire.Request{Method: "POST", Path: wire.PathOpen, Msg: json.RawMessage(raw)}
	if request != "" {
		salt, _ := hex.DecodeString(o.Salt)
		up, err := seal.New(f.key, keyring.LabelUpload, salt, wire.Hash(raw))
		require.NoError(t, err)
		req.Tail = up.Seal(nil, 0, true, payload.Bytes([]byte(request)))
	}
	tail, err = f.client.Call(t.Context(), req, &st)
	require.NoError(t, err)
	for !wire.Ended(st.Phase) && st.Down == nil {
		tail, err = f.client.Call(t.Context(), wire.Request{Method: "GET", Path: wire.PathStatus, Query: url.Values{"id": {o.ID}, "wait": {"1"}}}, &st)
		require.NoError(t, err)
	}
	return raw, st, tail
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

// TestListingRunsBesideItsRefresh: a listing that waits for upstream to
// be listed has its answer from the mirror made meanwhile, and uses it
// when the refresh moved nothing; when upstream moved, it is dropped and
// the answer shows upstream as it is now.
func TestListingRunsBesideItsRefresh(t *testing.T) {
	f := newFixture(t, Config{})
	ahead := func(outcome string) int {
		var m dto.Metric
		require.NoError(t, f.srv.metrics.lsRefsAhead.WithLabelValues(outcome).Write(&m))
		return int(m.GetCounter().GetValue())
	}
	lsRefs := pkt("command=ls-refs\n") + "0001" + pkt("symrefs\n") + pkt("peel\n") + pkt("ref-prefix HEAD\n") + pkt("ref-prefix refs/heads/\n") + "0000"
	_, ls := f.read(t, wire.KindFetch, lsRefs, "") // the mirror is made
	require.Contains(t, ls, f.first+" refs/heads/master")

	used := ahead("used")
	_, again := f.read(t, wire.KindFetch, lsRefs, "")
	require.Equal(t, ls, again)
	require.Equal(t, used+1, ahead("used"), "the answer run beside the refresh is used")

	// Upstream moves, not through the relay.
	dropped := ahead("dropped")
	gittest.Git(t, f.work, "push", "-q", f.upstream, "master")
	_, ls = f.read(t, wire.KindFetch, lsRefs, "")
	require.Contains(t, ls, f.second+" refs/heads/master")
	require.Contains(t, ls, f.second+" HEAD symref-target:refs/heads/master")
	require.Equal(t, dropped+1, ahead("dropped"), "the answer run before the refresh moved the mirror is dropped")
	require.Equal(t, used+1, ahead("used"))
}

// receivePacks counts the receive-packs running on dir.
func receivePacks(t *testing.T, dir string) int {
	t.Helper()
	return gittest.Processes(t, func(cmd, _ []byte) bool {
		return bytes.Contains(cmd, []byte("receive-pack\x00")) && bytes.Contains(cmd, []byte(dir))
	})
}

// TestPushBeginsAtItsListing: a push listing starts upstream's
// receive-pack for the push that follows, which takes it; upstream that
// moves in between refuses the push as it would any stale one; a listing
// no push follows leaves no receive-pack behind, and a listing that says
// no push follows starts none.
func TestPushBeginsAtItsListing(t *testing.T) {
	f := newFixture(t, Config{parkFor: time.Minute})
	begun := func() int {
		var m dto.Metric
		require.NoError(t, f.srv.metrics.pushesParked.Write(&m))
		return int(m.GetCounter().GetValue())
	}
	bundle := f.bundle(t, "master", "^"+f.first)
	man := wire.PushManifest{Updates: []wire.Update{{Ref: "refs/heads/master", Old: f.first, New: f.second}}}

	// Upstream moves after the listing: the push, on the receive-pack
	// begun before, is refused, and upstream keeps what it moved to.
	forPush := wire.Open{Kind: wire.KindRefs, Push: true}
	_, refs := f.readOpen(t, forPush, "")
	require.Contains(t, refs, f.first+" refs/heads/master")
	require.Eventually(t, func() bool { return receivePacks(t, f.upstream) == 1 }, 10*time.Second, 10*time.Millisecond)
	other := gittest.Git(t, f.work, "commit-tree", "-m", "elsewhere", "-p", f.first, f.first+"^{tree}")
	gittest.Git(t, f.work, "push", "-q", f.upstream, other+":refs/heads/master")
	st, err := f.pushRaw(t, man, bundle, 0)
	require.NoError(t, err)
	require.Equal(t, 1, begun())
	require.Len(t, st.Results, 1)
	require.False(t, st.Results[0].OK, "a push on a listing older than upstream's move")
	require.Equal(t, wire.ReasonFetchFirst, st.Results[0].Reason)
	require.Equal(t, other, f.upstreamMaster(t))

	// A fresh listing, and the push lands on the receive-pack it began.
	gittest.Git(t, f.work, "push", "-q", "-f", f.upstream, f.first+":refs/heads/master")
	f.readOpen(t, forPush, "")
	st, err = f.pushRaw(t, man, bundle, 0)
	f.requireLanded(t, st, err, f.second)
	require.Equal(t, 2, begun())
	require.Zero(t, receivePacks(t, f.upstream))

	// A listing no push follows: its receive-pack ends when the wait does.
	f2 := newFixture(t, Config{parkFor: 50 * time.Millisecond})
	f2.readOpen(t, forPush, "")
	require.Eventually(t, func() bool { return receivePacks(t, f2.upstream) == 0 }, 10*time.Second, 10*time.Millisecond)
	st, err = f2.pushRaw(t, wire.PushManifest{Updates: []wire.Update{{Ref: "refs/heads/master", Old: f2.first, New: f2.second}}},
		f2.bundle(t, "master", "^"+f2.first), 0)
	f2.requireLanded(t, st, err, f2.second)
	var m dto.Metric
	require.NoError(t, f2.srv.metrics.pushesParked.Write(&m))
	require.Zero(t, m.GetCounter().GetValue(), "the push after the wait began its own")

	// A listing that is not for a push begins nothing.
	f3 := newFixture(t, Config{parkFor: time.Minute})
	f3.read(t, wire.KindRefs, "", "")
	st, err = f3.pushRaw(t, wire.PushManifest{Updates: []wire.Update{{Ref: "refs/heads/master", Old: f3.first, New: f3.second}}},
		f3.bundle(t, "master", "^"+f3.first), 0)
	f3.requireLanded(t, st, err, f3.second)
	require.NoError(t, f3.srv.metrics.pushesParked.Write(&m))
	require.Zero(t, m.GetCounter().GetValue(), "a listing for a fetch")
}

// TestFirstChunkComesWithTheAnswer: the reply that waited for a chunked
// answer carries its first chunk, byte for byte what x/down serves for
// it, so the client hands git the answer's first bytes without a round
// trip more; unless the client's cap on bodies leaves no room for it
// beside the status, when the client asks x/down for it.
func TestFirstChunkComesWithTheAnswer(t *testing.T) {
	f := newFixture(t, Config{})
	tip := f.commitRandom(t, "big.bin", 1<<20)
	gittest.Git(t, f.work, "push", "-q", f.upstream, "master")
	fetch := pkt("command=fetch\n") + "0001" + pkt("no-progress\n") + pkt("want "+tip+"\n") + pkt("done\n") + "0000"
	for _, maxBody := range []int64{f.client.MaxBody, wire.MinMaxBody} {
		t.Run(fmt.Sprintf("maxBody=%d", maxBody), func(t *testing.T) {
			caps, _ := f.read(t, wire.KindCaps, "", "")
			raw, st, first := f.openRead(t, wire.Open{Kind: wire.KindFetch, MaxBody: maxBody, Inline: true, Follows: caps}, fetch)
			require.NotNil(t, st.Down, "%s: %s", st.Phase, st.Message)
			require.False(t, st.Down.Inline, "an answer of a megabyte comes in chunks")
			served, err := f.client.Get(t.Context(), wire.Request{Method: "GET", Path: wire.PathDown, Query: url.Values{"id": {st.ID}, "i": {"0"}}})
			require.NoError(t, err)
			if maxBody < 256<<10 {
				require.False(t, st.First, "no room for the first chunk beside the status")
				require.Empty(t, first)
				require.LessOrEqual(t, int64(len(served)), maxBody)
				return
			}
			require.True(t, st.First, "the first chunk comes with the answer")
			require.Equal(t, served, first, "the same bytes x/down serves")
			downSalt, err := hex.DecodeString(st.Down.Salt)
			require.NoError(t, err)
			down, err := seal.New(f.key, keyring.LabelDownload, downSalt, wire.Hash(raw))
			require.NoError(t, err)
			plain, err := down.Open(nil, 0, first[0] == wire.DownFinal, first[1:])
			require.NoError(t, err)
			require.Equal(t, payload.Ramp(0, st.Down.ChunkSize), len(plain), "the whole first chunk")
		})
	}
}
