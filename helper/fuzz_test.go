package helper

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/fuzztest"
	"github.com/git-relay/git-relay/internal/gitx"
	"github.com/git-relay/git-relay/internal/wire"
)

const fuzzTimeout = 30 * time.Second

func pkt(s string) string { return fmt.Sprintf("%04x%s", len(s)+4, s) }

// gitRequests are protocol v2 requests as git 2.39 writes them to a
// stateless-connect helper, one after the other.
var gitRequests = pkt("command=ls-refs\n") + pkt("agent=git/2.39.5\n") + pkt("object-format=sha1\n") + "0001" +
	pkt("peel\n") + pkt("symrefs\n") + pkt("unborn\n") + pkt("ref-prefix HEAD\n") + pkt("ref-prefix refs/heads/\n") + "0000" +
	pkt("command=fetch\n") + pkt("agent=git/2.39.5\n") + pkt("object-format=sha1\n") + "0001" +
	pkt("thin-pack\n") + pkt("ofs-delta\n") + pkt("deepen 1\n") + pkt("want "+strings.Repeat("a", 40)+"\n") + pkt("done\n") + "0000"

// FuzzReadRequest: any bytes on stdin after stateless-connect are cut into
// requests that are git's bytes exactly, each a sequence of pkt-lines up
// to and including a flush, bounded in size; io.EOF comes only at the end
// of the input, between requests.
func FuzzReadRequest(f *testing.F) {
	f.Add([]byte(gitRequests))
	f.Add([]byte(gitRequests[:len(gitRequests)-3]))
	f.Add([]byte("0000"))
	f.Add([]byte("00010002000300040000"))
	f.Add([]byte("fffe"))
	f.Add([]byte("zzzz"))
	f.Fuzz(func(t *testing.T, data []byte) {
		defer fuzztest.Watchdog(t, fuzzTimeout)()
		in := bufio.NewReader(bytes.NewReader(data))
		var got []byte
		var err error
		fuzztest.Bounded(t, len(data), 1<<20, 64, func() {
			for {
				var req []byte
				req, err = readRequest(in)
				if err != nil {
					require.Nil(t, req)
					return
				}
				require.LessOrEqual(t, len(req), maxRequest+65535)
				requirePktLines(t, req)
				got = append(got, req...)
			}
		})
		require.True(t, bytes.HasPrefix(data, got), "the requests are not git's bytes")
		if err == io.EOF {
			require.Equal(t, len(data), len(got), "io.EOF before the end of the input")
		}
	})
}

// requirePktLines checks that req is pkt-lines ending with its only flush.
func requirePktLines(t *testing.T, req []byte) {
	t.Helper()
	for len(req) > 0 {
		require.GreaterOrEqual(t, len(req), 4, "a cut pkt-line")
		n, err := strconv.ParseUint(string(req[:4]), 16, 16)
		require.NoError(t, err)
		switch {
		case n == 0:
			require.Len(t, req, 4, "bytes after the flush")
			return
		case n < 4:
			req = req[4:]
		default:
			require.GreaterOrEqual(t, uint64(len(req)), n, "a cut pkt-line")
			req = req[n:]
		}
	}
	t.Fatal("no flush at the end")
}

// listing writes a ref list as the server does.
func listing(t testing.TB, h wire.RefsHeader, refs map[string]string) []byte {
	var b bytes.Buffer
	js, err := json.Marshal(h)
	require.NoError(t, err)
	b.Write(js)
	b.WriteByte('\n')
	names := make([]string, 0, len(refs))
	for n := range refs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		b.WriteString(refs[n] + " " + n + "\n")
	}
	return b.Bytes()
}

// FuzzParseRefList: any bytes as the relay's ref listing give an error or
// a list whose ids are object ids (the push checks slice them) and whose
// names keep to one line; the list written out again as the server
// writes it reads back the same, and the list the helper gives git has
// one line per ref (and HEAD) and ends with a blank line.
func FuzzParseRefList(f *testing.F) {
	a, b := strings.Repeat("a", 40), strings.Repeat("b", 40)
	f.Add(listing(f, wire.RefsHeader{Head: "refs/heads/master", AllowForce: true, MaxRefs: 1000}, map[string]string{"refs/heads/master": a, "refs/tags/v1": b, "refs/heads/x/y": a}))
	f.Add(listing(f, wire.RefsHeader{}, nil))
	f.Add([]byte("{}\n" + a + " \n"))
	f.Add([]byte("{\"head\":\"refs/heads/x\"}\n" + a + " refs/heads/x"))
	f.Add([]byte("{\"maxRefs\":-1}\n" + strings.ToUpper(a) + " refs/heads/x\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		defer fuzztest.Watchdog(t, fuzzTimeout)()
		var l *refList
		var err error
		fuzztest.Bounded(t, len(data), 1<<20, 64, func() {
			l, err = parseRefList(bytes.NewReader(data))
		})
		if err != nil {
			require.Nil(t, l)
			return
		}
		for name, id := range l.Refs {
			require.True(t, gitx.ValidOID(id), "%q", id)
			require.NotContains(t, name, "\n")
		}
		again, err := parseRefList(bytes.NewReader(listing(t, l.RefsHeader, l.Refs)))
		require.NoError(t, err)
		require.Equal(t, l.Refs, again.Refs)
		require.Equal(t, l.RefsHeader, again.RefsHeader)

		for _, forPush := range []bool{false, true} {
			var out bytes.Buffer
			h := &Helper{}
			h.writeList(&out, l, forPush)
			lines := strings.Split(out.String(), "\n")
			head := 0
			if !forPush && l.Head != "" && l.Refs[l.Head] != "" {
				head = 1
			}
			// The refs, HEAD, the blank line, and "" after its newline.
			require.Len(t, lines, len(l.Refs)+head+2)
			require.Equal(t, "", lines[len(lines)-2])
		}
	})
}

// FuzzReadBatch: any bytes after a push line give an error or the batch's
// arguments, read up to and including its blank line and not a byte
// further, one per line and in order.
func FuzzReadBatch(f *testing.F) {
	f.Add("refs/heads/master:refs/heads/master", []byte("push +HEAD:refs/heads/x\npush :refs/tags/v1\n\nlist\n"))
	f.Add("a:b", []byte("\n"))
	f.Add("a:b", []byte("push a:b"))
	f.Add("a:b", []byte("fetch a b\n\n"))
	f.Add("", []byte("push\npush  x\n\n"))
	f.Fuzz(func(t *testing.T, first string, rest []byte) {
		defer fuzztest.Watchdog(t, fuzzTimeout)()
		in := bufio.NewReader(bytes.NewReader(rest))
		args, err := readBatch(in, "push", first)
		if err != nil {
			require.Nil(t, args)
			return
		}
		left, rerr := io.ReadAll(in)
		require.NoError(t, rerr)
		consumed := rest[:len(rest)-len(left)]
		require.True(t, bytes.HasSuffix(consumed, []byte("\n")))
		lines := strings.Split(string(consumed), "\n")
		// The lines, the blank line, and "" after its newline.
		require.Len(t, lines, len(args)+1)
		require.Equal(t, first, args[0])
		for i, a := range args[1:] {
			require.True(t, lines[i] == "push "+a || lines[i] == "push" && a == "", "%q from %q", a, lines[i])
		}
		require.Equal(t, "", lines[len(lines)-2])
	})
}
