package server

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/fuzztest"
	"github.com/git-relay/git-relay/internal/gitx"
	"github.com/git-relay/git-relay/internal/keyring"
	"github.com/git-relay/git-relay/internal/payload"
	"github.com/git-relay/git-relay/internal/seal"
	"github.com/git-relay/git-relay/internal/upstream"
	"github.com/git-relay/git-relay/internal/wire"
)

const fuzzTimeout = 30 * time.Second

// gitRequests are protocol v2 requests as git 2.39 writes them.
var gitRequests = []string{
	pkt("command=ls-refs\n") + pkt("agent=git/2.39.5\n") + pkt("object-format=sha1\n") + "0001" +
		pkt("peel\n") + pkt("symrefs\n") + pkt("unborn\n") + pkt("ref-prefix HEAD\n") + pkt("ref-prefix refs/heads/\n") + pkt("ref-prefix refs/tags/\n") + "0000",
	pkt("command=fetch\n") + pkt("agent=git/2.39.5\n") + pkt("object-format=sha1\n") + "0001" +
		pkt("thin-pack\n") + pkt("no-progress\n") + pkt("ofs-delta\n") + pkt("deepen 1\n") + pkt("filter blob:none\n") +
		pkt("want "+strings.Repeat("a", 40)+"\n") + pkt("have "+strings.Repeat("b", 40)+"\n") + pkt("done\n") + "0000",
	pkt("command=object-info\n") + "0001" + pkt("size\n") + pkt("oid "+strings.Repeat("c", 40)+"\n") + "0000",
	pkt("command=fetch") + "0000",
	pkt("command=bundle-uri\n") + "0000",
	"0000", "0001", "ffff", "000",
}

// FuzzRequestCommand: any bytes as a fetch exchange's git request give an
// error or one of the commands the relay serves, and then the request
// does start with exactly that command's pkt-line.
func FuzzRequestCommand(f *testing.F) {
	for _, r := range gitRequests {
		f.Add([]byte(r))
	}
	f.Fuzz(func(t *testing.T, req []byte) {
		defer fuzztest.Watchdog(t, fuzzTimeout)()
		cmd, err := requestCommand(req)
		if err != nil {
			require.Empty(t, cmd)
			return
		}
		require.Contains(t, []string{"ls-refs", "fetch", "object-info"}, cmd)
		line := "command=" + cmd
		require.True(t, bytes.EqualFold(req[:4], []byte(pkt(line)[:4])) || bytes.EqualFold(req[:4], []byte(pkt(line + "\n")[:4])), "%q", req)
		require.True(t, bytes.HasPrefix(req[4:], []byte(line)), "%q", req)
	})
}

// manifestBlock frames a manifest as the helper does.
func manifestBlock(js []byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(js))), js...)
}

// FuzzManifest: any bytes at the start of a push payload give an error or
// a manifest of 1 to maxRefs updates that was read exactly (what follows,
// the bundle, is untouched) and reads back the same when framed again,
// at a memory cost that grows with the bytes, not the length they claim.
// checkManifest then refuses it or vouches for names, ids and options,
// and the plan gives every update a result by the server's policies.
func FuzzManifest(f *testing.F) {
	a, b := strings.Repeat("a", 40), strings.Repeat("b", 40)
	for _, m := range []wire.PushManifest{
		{Updates: []wire.Update{{Ref: "refs/heads/master", Old: a, New: b}}},
		{Updates: []wire.Update{{Ref: "refs/heads/master", Old: b, New: a, Force: true}, {Ref: "refs/tags/v1", Old: wire.ZeroID, New: a}}, Atomic: true, Options: []string{"ci.skip", "x=y"}},
		{Updates: []wire.Update{{Ref: "refs/heads/master", Old: b, New: wire.ZeroID}, {Ref: "refs/tags/v1", Old: b, New: a, Force: true}, {Ref: "refs/notes/x", Old: wire.ZeroID, New: a}}},
		{Updates: []wire.Update{{Ref: "refs/heads/x", Old: a, New: a}, {Ref: "refs/heads/x", Old: a, New: b}}},
		{Updates: []wire.Update{{Ref: "refs/heads/x", Old: a, New: b}}, Options: []string{"a\nb"}},
	} {
		js, err := json.Marshal(m)
		require.NoError(f, err)
		f.Add(append(manifestBlock(js), "# v2 git bundle\n"...), uint16(10), false)
		f.Add(manifestBlock(js), uint16(1), true)
	}
	f.Add([]byte{0x0f, 0xff, 0xff, 0xff, '{'}, uint16(10), false)
	f.Add([]byte{0xff, 0xff, 0xff, 0xff}, uint16(10), false)
	f.Fuzz(func(t *testing.T, data []byte, maxRefs uint16, allowForce bool) {
		defer fuzztest.Watchdog(t, fuzzTimeout)()
		br := bufio.NewReader(bytes.NewReader(data))
		var m wire.PushManifest
		var err error
		fuzztest.Bounded(t, len(data), 1<<20, 64, func() {
			m, err = readManifest(br, int(maxRefs))
		})
		if err != nil {
			return
		}
		require.NotEmpty(t, m.Updates)
		require.LessOrEqual(t, len(m.Updates), int(maxRefs))
		size := int(binary.BigEndian.Uint32(data))
		rest, err := io.ReadAll(br)
		require.NoError(t, err)
		require.Equal(t, data[4+size:], rest, "the manifest was not read exactly")

		js, err := json.Marshal(m)
		require.NoError(t, err)
		again, err := readManifest(bufio.NewReader(bytes.NewReader(manifestBlock(js))), int(maxRefs))
		require.NoError(t, err)
		js2, err := json.Marshal(again)
		require.NoError(t, err)
		require.Equal(t, string(js), string(js2))

		s := &Server{cfg: Config{MaxBody: wire.DefaultMaxBody, AllowForce: allowForce}}
		if err := s.checkManifest(&m); err != nil {
			var ue *userError
			require.True(t, errors.As(err, &ue), "%v is not a client's error", err)
			return
		}
		seen := map[string]bool{}
		for _, u := range m.Updates {
			require.True(t, gitx.ValidRefName(u.Ref), "%q", u.Ref)
			require.False(t, seen[u.Ref])
			seen[u.Ref] = true
			require.True(t, gitx.ValidOID(u.Old) && gitx.ValidOID(u.New))
			require.NotEqual(t, u.Old, u.New)
		}
		require.LessOrEqual(t, len(m.Options), 100)
		for _, o := range m.Options {
			require.LessOrEqual(t, len(o), 4096)
			require.NotContains(t, o, "\n")
			require.NotContains(t, o, "\x00")
		}

		// The plan against an upstream with a default branch and a tag.
		refs := &upstream.Refs{Head: "refs/heads/master", Refs: map[string]string{"refs/heads/master": a, "refs/tags/v1": b}}
		p := &pushPlan{man: m, refs: refs, results: map[string]*wire.RefResult{}}
		s.plan(p)
		require.Len(t, p.results, len(m.Updates))
		for _, u := range m.Updates {
			r := p.results[u.Ref]
			require.NotNil(t, r)
			cur := refs.Refs[u.Ref]
			if cur == "" {
				cur = wire.ZeroID
			}
			isTag := strings.HasPrefix(u.Ref, "refs/tags/")
			switch {
			case !strings.HasPrefix(u.Ref, "refs/heads/") && !isTag:
				require.Equal(t, wire.ReasonForbidden, r.Reason, "%+v", u)
			case r.OK:
				require.Equal(t, cur, u.New, "%+v", u)
			case r.Reason == "":
				// Still to do: it builds on what upstream has, deletes
				// no default branch and moves no tag this relay keeps.
				require.Equal(t, cur, u.Old, "%+v", u)
				require.False(t, u.New == wire.ZeroID && u.Ref == refs.Head, "%+v", u)
				require.False(t, isTag && u.Old != wire.ZeroID && u.New != wire.ZeroID && !(u.Force && allowForce), "%+v", u)
			}
		}
	})
}

// FuzzCheckOpen: any Open message, inline or not, is refused as a client's
// error or satisfies what the exchange's handling relies on: a valid id,
// kind and repository, body caps the server can meet, an upload chunk
// size that fits a body and a download chunk size that Split takes, and
// a salt that makes the upload's key.
func FuzzCheckOpen(f *testing.F) {
	salt := strings.Repeat("ab", 32)
	for _, o := range []wire.Open{
		{V: wire.Version, ID: strings.Repeat("0", 32), Kind: wire.KindPush, Repo: "acme/widgets", Salt: salt, MaxBody: wire.DefaultMaxBody, Inline: true},
		{V: wire.Version, ID: strings.Repeat("1", 32), Kind: wire.KindPush, Repo: "acme/widgets", Salt: salt, ChunkSize: wire.DefaultMaxBody - seal.Overhead, MaxBody: wire.DefaultMaxBody},
		{V: wire.Version, ID: strings.Repeat("2", 32), Kind: wire.KindFetch, Repo: "a-b/c.d_e", Salt: salt, ChunkSize: wire.MinMaxBody - seal.Overhead, MaxBody: wire.MinMaxBody},
		{V: wire.Version, ID: strings.Repeat("3", 32), Kind: wire.KindRefs, Repo: "acme/widgets", Salt: salt, MaxBody: 1 << 62},
		{V: wire.Version, ID: strings.Repeat("4", 32), Kind: wire.KindCaps, Repo: "acme/..", Salt: salt, MaxBody: wire.DefaultMaxBody},
		{V: wire.Version, ID: strings.Repeat("5", 32), Kind: wire.KindPush, Repo: "acme/widgets", Salt: salt, ChunkSize: 9223372036854775800, MaxBody: wire.DefaultMaxBody},
	} {
		js, err := json.Marshal(o)
		require.NoError(f, err)
		f.Add(js, o.Inline)
	}
	key := keyring.FromSecret("0a0b0c0d", bytes.Repeat([]byte{1}, 32))
	f.Fuzz(func(t *testing.T, js []byte, inline bool) {
		defer fuzztest.Watchdog(t, fuzzTimeout)()
		var o wire.Open
		if json.Unmarshal(js, &o) != nil {
			return
		}
		s := &Server{cfg: Config{MaxBody: wire.DefaultMaxBody}}
		if err := s.checkOpen(&o, inline); err != nil {
			var ue *userError
			require.True(t, errors.As(err, &ue), "%v is not a client's error", err)
			return
		}
		require.Equal(t, wire.Version, o.V)
		require.True(t, wire.ValidID(o.ID))
		require.Contains(t, []string{wire.KindPush, wire.KindRefs, wire.KindCaps, wire.KindFetch}, o.Kind)
		require.NoError(t, validRepo(o.Repo))
		require.GreaterOrEqual(t, o.MaxBody, int64(wire.MinMaxBody))
		require.Equal(t, inline, o.Inline)
		upload := o.Kind == wire.KindPush || o.Kind == wire.KindFetch
		require.Equal(t, upload, o.Inline || o.ChunkSize > 0)
		if o.ChunkSize != 0 {
			require.False(t, o.Inline)
			require.GreaterOrEqual(t, o.ChunkSize, wire.MinMaxBody-seal.Overhead)
			require.LessOrEqual(t, int64(o.ChunkSize)+seal.Overhead, s.cfg.MaxBody)
		}
		down := s.downChunkSize(o.MaxBody)
		require.Greater(t, down, payload.TrailerSize+1)
		require.LessOrEqual(t, int64(down)+1+seal.Overhead, min(o.MaxBody, s.cfg.MaxBody))

		e, err := newExch(key, js, o)
		if err != nil {
			var ue *userError
			require.True(t, errors.As(err, &ue), "%v is not a client's error", err)
			return
		}
		require.Equal(t, o.ID, e.id)
		sealed := e.up.Seal(nil, 0, true, []byte("chunk"))
		_, err = e.up.Open(nil, 0, true, sealed)
		require.NoError(t, err)
	})
}
