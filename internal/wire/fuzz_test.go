package wire

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/keyring"
)

// The fuzz targets of the protocol's parsers. Every seed is made with the
// package's own encoders, with fixed nonces and a fixed clock, so that the
// fuzzing processes (which each run this setup) agree on what was signed
// and sealed: a target can then say that whatever is accepted is one of
// those, and not a forgery.

var (
	fuzzKey   = testKey(7)
	fuzzOther = testKey(8) // in the ring too: a second key must not help a forger
	fuzzNow   = time.UnixMilli(1_800_000_000_000)
	fuzzQuery = url.Values{"id": {"0123456789abcdef0123456789abcdef"}, "i": {"3"}, "final": {"1"}}
)

func fuzzVerifier(now time.Time) *Verifier {
	return &Verifier{Ring: keyring.NewRing(fuzzKey, fuzzOther), Now: func() time.Time { return now }, Start: fuzzNow.Add(-2 * Window)}
}

// signedRequest is a request as a client signs it.
type signedRequest struct {
	method, path string
	query        url.Values
	a            Auth
}

func fuzzRequests() []signedRequest {
	nonce := func(i int) string { return fmt.Sprintf("%032x", i+1) }
	ts := fuzzNow.UnixMilli()
	return []signedRequest{
		{http.MethodPost, PathOpen, nil, Auth{TS: ts, Nonce: nonce(0), Len: 312}},
		{http.MethodPut, PathUp, fuzzQuery, Auth{TS: ts - 1000, Nonce: nonce(1), Len: DefaultMaxBody}},
		{http.MethodGet, PathDown, url.Values{"id": fuzzQuery["id"], "i": {"0"}}, Auth{TS: ts + 299_000, Nonce: nonce(2)}},
		{http.MethodGet, PathStatus, url.Values{"id": fuzzQuery["id"], "wait": {"1"}}, Auth{TS: ts, Nonce: strings.Repeat("f", 64)}},
		{http.MethodPost, PathCancel, url.Values{"id": fuzzQuery["id"]}, Auth{TS: ts, Nonce: nonce(4)[:16]}},
		{http.MethodGet, PathRemoteInfo, url.Values{"repo": {"acme/widgets"}, "branch": {"master"}}, Auth{TS: ts, Nonce: nonce(5)}},
	}
}

// FuzzParseAuth: an Authorization header that parses has the fields
// Verify relies on, within their bounds, and reads back the same when
// written as a client writes it; anything else is ErrUnauthenticated.
func FuzzParseAuth(f *testing.F) {
	for _, r := range fuzzRequests() {
		f.Add(SignRequest(fuzzKey, r.method, r.path, r.query, &r.a))
	}
	for _, h := range []string{
		"", "Bearer abc", scheme, scheme + " ",
		scheme + " kid=,ts=,nonce=,len=,sig=",
		scheme + " kid=00000007 , ts = 5,nonce=0123456789abcdef, len=0 ,sig=00",
		scheme + " kid=00000007,ts=+5,nonce=0123456789abcdef0123,len=-1,sig=00",
		scheme + " kid=00000007,kid=00000008,ts=9223372036854775807,nonce=0123456789abcdef,len=9223372036854775807,sig=x=y",
		scheme + " " + strings.Repeat("kid=a,", 90),
	} {
		f.Add(h)
	}
	f.Fuzz(func(t *testing.T, h string) {
		a, err := ParseAuth(h)
		if err != nil {
			require.ErrorIs(t, err, ErrUnauthenticated)
			require.Equal(t, Auth{}, a)
			return
		}
		require.LessOrEqual(t, len(h), 512)
		require.NotEmpty(t, a.KeyID)
		require.LessOrEqual(t, len(a.KeyID), 16)
		require.GreaterOrEqual(t, len(a.Nonce), 16)
		require.LessOrEqual(t, len(a.Nonce), 64)
		require.NotEmpty(t, a.Sig)
		require.GreaterOrEqual(t, a.Len, int64(0))
		again := fmt.Sprintf("%s kid=%s,ts=%d,nonce=%s,len=%d,sig=%s", scheme, a.KeyID, a.TS, a.Nonce, a.Len, a.Sig)
		if len(again) <= 512 {
			b, err := ParseAuth(again)
			require.NoError(t, err)
			require.Equal(t, a, b)
		}
	})
}

// FuzzVerify: whatever the header, method, path, query, declared length
// and clock, Verify accepts only a request that the key holder signed
// (one of the seeds), exactly as it was signed, inside the time window,
// once; every refusal is ErrUnauthenticated.
func FuzzVerify(f *testing.F) {
	signed := map[string]bool{}
	for _, r := range fuzzRequests() {
		h := SignRequest(fuzzKey, r.method, r.path, r.query, &r.a)
		signed[r.a.canonical(r.method, r.path, r.query)] = true
		f.Add(h, r.method, r.path, r.query.Encode(), r.a.Len, int64(0))
		f.Add(h, r.method, r.path, r.query.Encode(), r.a.Len, Window.Milliseconds())
		f.Add(h, r.method, r.path+"x", r.query.Encode(), r.a.Len+1, int64(-1))
	}
	f.Add("", "GET", PathStatus, "", int64(0), int64(0))
	f.Fuzz(func(t *testing.T, header, method, path, rawQuery string, contentLength, skew int64) {
		// As the server reads it: r.URL.Query() drops malformed pairs.
		q, _ := url.ParseQuery(rawQuery)
		now := fuzzNow.Add(time.Duration(skew%(4*Window.Milliseconds())) * time.Millisecond)
		v := fuzzVerifier(now)
		key, a, err := v.Verify(header, method, path, q, contentLength)
		if err != nil {
			require.ErrorIs(t, err, ErrUnauthenticated)
			require.Empty(t, key.ID)
			return
		}
		require.True(t, signed[a.canonical(method, path, q)], "accepted a request nobody signed: %q", header)
		require.Equal(t, fuzzKey.ID, key.ID)
		require.Equal(t, contentLength, a.Len)
		d := now.UnixMilli() - a.TS
		require.LessOrEqual(t, d, Window.Milliseconds())
		require.GreaterOrEqual(t, d, -Window.Milliseconds())
		_, _, err = v.Verify(header, method, path, q, contentLength)
		require.ErrorIs(t, err, ErrUnauthenticated, "a replay was accepted")
		// The same request, signed before the server started.
		stale := fuzzVerifier(now)
		stale.Start = time.UnixMilli(a.TS + 1)
		_, _, err = stale.Verify(header, method, path, q, contentLength)
		require.ErrorIs(t, err, ErrStale)
	})
}

// FuzzVerifySigned: a request the client signs, for any method, path,
// query, nonce, length and clock skew, verifies when its time is inside
// the window, with the fields it was signed with; a header with any one
// byte changed, or the request with another length, path or query, does
// not.
func FuzzVerifySigned(f *testing.F) {
	for _, r := range fuzzRequests() {
		f.Add(r.method, r.path, r.query.Encode(), []byte(r.a.Nonce), r.a.Len, r.a.TS-fuzzNow.UnixMilli(), uint16(5), byte('x'))
	}
	f.Add("PUT", "x/up", "i=0&id=a%0Ab", []byte{0, 1, 2, 3, 4, 5, 6, 7}, int64(-1), int64(300_001), uint16(0), byte(0))
	f.Fuzz(func(t *testing.T, method, path, rawQuery string, nonceBytes []byte, n, skew int64, pos uint16, b byte) {
		if len(nonceBytes) < 8 || len(nonceBytes) > 32 || n < 0 {
			return // a client's nonces are 16 to 64 hex digits; lengths are not negative
		}
		q, _ := url.ParseQuery(rawQuery)
		skew %= 2 * Window.Milliseconds()
		a := Auth{TS: fuzzNow.UnixMilli() + skew, Nonce: hex.EncodeToString(nonceBytes), Len: n}
		h := SignRequest(fuzzKey, method, path, q, &a)
		_, got, err := fuzzVerifier(fuzzNow).Verify(h, method, path, q, n)
		if skew < -Window.Milliseconds() || skew > Window.Milliseconds() || len(h) > 512 {
			require.ErrorIs(t, err, ErrUnauthenticated)
			return
		}
		require.NoError(t, err)
		require.Equal(t, a, got)

		refused := func(what, h, method, path string, q url.Values, n int64) {
			t.Helper()
			_, _, err := fuzzVerifier(fuzzNow).Verify(h, method, path, q, n)
			require.ErrorIs(t, err, ErrUnauthenticated, what)
		}
		if i := int(pos) % len(h); h[i] != b {
			tampered := []byte(h)
			tampered[i] = b
			refused(fmt.Sprintf("header with byte %d changed", i), string(tampered), method, path, q, n)
		}
		refused("another length", h, method, path, q, n+1)
		refused("another path", h, method, path+"/", q, n)
		q2 := url.Values{}
		for k, v := range q {
			q2[k] = v
		}
		q2["zz"] = append(append([]string(nil), q2["zz"]...), "1")
		refused("another query", h, method, path, q2, n)
	})
}

// fuzzPlain lists the plaintexts the seeds seal: a body that opens must
// hold one of them, or it was forged.
func fuzzPlain(t testing.TB) [][]byte {
	var out [][]byte
	for _, m := range []struct {
		msg  any
		tail []byte
	}{
		{Open{V: Version, ID: "0123456789abcdef0123456789abcdef", Kind: KindPush, Repo: "acme/widgets", Salt: strings.Repeat("ab", 32), MaxBody: DefaultMaxBody, Inline: true}, []byte("sealed inline chunk")},
		{Open{V: Version, ID: "0123456789abcdef0123456789abcdef", Kind: KindFetch, Repo: "acme/widgets", Salt: strings.Repeat("cd", 32), ChunkSize: DefaultMaxBody - 16, MaxBody: DefaultMaxBody}, nil},
		{Status{ID: "0123456789abcdef0123456789abcdef", Phase: PhaseDone, Results: []RefResult{{Ref: "refs/heads/master", OK: true}}, Timeline: []PhaseTime{{Phase: PhaseReceiving, At: fuzzNow.UTC()}}}, nil},
		{Status{ID: "0123456789abcdef0123456789abcdef", Phase: PhaseSending, Down: &Down{Inline: true, Chunks: 1, Final: true}}, []byte("\x00ls-refs answer and a trailer")},
		{Error{Code: CodeConflict, Message: "chunk 3 already holds different bytes"}, nil},
		{json.RawMessage(nil), nil},
	} {
		p, err := frame(m.msg, m.tail)
		require.NoError(t, err)
		out = append(out, p)
	}
	return out
}

func fuzzRequestAuth(body []byte) Auth {
	return Auth{KeyID: fuzzKey.ID, TS: fuzzNow.UnixMilli(), Nonce: "00000000000000000000000000000001", Len: int64(len(body))}
}

// FuzzOpenRequest: a request body opens only if it is one the key holder
// sealed for that request (never a forgery); it then splits into its
// message and tail exactly as they were framed. The framing itself, on
// any plaintext, either splits into parts that frame back to the same
// bytes or is refused as ErrSealed.
func FuzzOpenRequest(f *testing.F) {
	plains := fuzzPlain(f)
	known := map[string]bool{}
	for _, p := range plains {
		known[string(p)] = true
		a := fuzzRequestAuth(make([]byte, SealedLen(len(p))))
		body, err := sealRequest(fuzzKey, a, http.MethodPost, PathOpen, nil, p)
		require.NoError(f, err)
		f.Add(body)
		f.Add(p)
	}
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, '{', '}'})
	f.Fuzz(func(t *testing.T, body []byte) {
		js, tail, err := unframe(body)
		if err != nil {
			require.ErrorIs(t, err, ErrSealed)
		} else {
			again, err := frame(json.RawMessage(js), tail)
			require.NoError(t, err)
			require.Equal(t, body, again)
		}

		a := fuzzRequestAuth(body)
		js, tail, err = OpenRequest(fuzzKey, a, http.MethodPost, PathOpen, nil, body)
		if err != nil {
			require.ErrorIs(t, err, ErrSealed)
			return
		}
		plain, err := frame(json.RawMessage(js), tail)
		require.NoError(t, err)
		require.True(t, known[string(plain)], "opened a body nobody sealed")
		require.EqualValues(t, SealedLen(len(plain)), len(body))
	})
}

// FuzzSealRoundTrip: any message bytes and tail, sealed for a request or
// an answer, open to exactly themselves, and only for that request or
// status; with any one byte changed, cut short or extended, they do not
// open.
func FuzzSealRoundTrip(f *testing.F) {
	for _, p := range fuzzPlain(f) {
		js, tail, err := unframe(p)
		require.NoError(f, err)
		f.Add(js, tail, "POST", PathOpen, "", uint16(200), uint16(7), byte(1))
	}
	f.Add([]byte(nil), []byte(nil), "PUT", PathUp, "id=x&i=1", uint16(409), uint16(0), byte(0))
	f.Fuzz(func(t *testing.T, js, tail []byte, method, path, rawQuery string, status uint16, pos uint16, b byte) {
		q, _ := url.ParseQuery(rawQuery)
		plain, err := frame(json.RawMessage(js), tail)
		require.NoError(t, err)
		a := fuzzRequestAuth(make([]byte, SealedLen(len(plain))))
		body, err := sealRequest(fuzzKey, a, method, path, q, plain)
		require.NoError(t, err)
		require.EqualValues(t, a.Len, len(body))
		gotJS, gotTail, err := OpenRequest(fuzzKey, a, method, path, q, body)
		require.NoError(t, err)
		require.Equal(t, string(js), string(gotJS))
		require.Equal(t, string(tail), string(gotTail))

		ans, err := SealAnswer(fuzzKey, a.Nonce, int(status), json.RawMessage(js), tail)
		require.NoError(t, err)
		gotTail, err = openAnswer(fuzzKey, a.Nonce, int(status), ans, nil)
		require.NoError(t, err)
		require.Equal(t, string(tail), string(gotTail))

		for what, bad := range map[string][]byte{
			"a changed byte": flip(body, int(pos), b),
			"cut short":      body[:len(body)-1],
			"extended":       append(append([]byte(nil), body...), b),
		} {
			if bad != nil {
				_, _, err := OpenRequest(fuzzKey, a, method, path, q, bad)
				require.ErrorIs(t, err, ErrSealed, what)
			}
		}
		for what, bad := range map[string][]byte{
			"a changed byte": flip(ans, int(pos), b),
			"cut short":      ans[:len(ans)-1],
			"extended":       append(append([]byte(nil), ans...), b),
		} {
			if bad != nil {
				_, err := openAnswer(fuzzKey, a.Nonce, int(status), bad, nil)
				require.ErrorIs(t, err, ErrSealed, what)
			}
		}
		_, _, err = OpenRequest(fuzzKey, a, method, path+"/", q, body)
		require.ErrorIs(t, err, ErrSealed, "another path")
		other := a
		other.Nonce = a.Nonce[:len(a.Nonce)-1] + "2"
		_, _, err = OpenRequest(fuzzKey, other, method, path, q, body)
		require.ErrorIs(t, err, ErrSealed, "another request's nonce")
		_, err = openAnswer(fuzzKey, a.Nonce, int(status)+1, ans, nil)
		require.ErrorIs(t, err, ErrSealed, "another status")
		_, err = openAnswer(fuzzOther, a.Nonce, int(status), ans, nil)
		require.ErrorIs(t, err, ErrSealed, "another key")
	})
}

// flip returns b with byte pos (modulo its length) set to v, or nil when
// that changes nothing.
func flip(b []byte, pos int, v byte) []byte {
	if len(b) == 0 {
		return nil
	}
	i := pos % len(b)
	if b[i] == v {
		return nil
	}
	out := append([]byte(nil), b...)
	out[i] = v
	return out
}

// FuzzOpenAnswer: an answer body opens only if the server sealed it for
// that request and status; what does not open is ErrSealed, and what
// opens but does not decode is an error, never a panic.
func FuzzOpenAnswer(f *testing.F) {
	plains := fuzzPlain(f)
	known := map[string]bool{}
	nonce := fuzzRequestAuth(nil).Nonce
	for _, p := range plains {
		known[string(p)] = true
		js, tail, err := unframe(p)
		require.NoError(f, err)
		ans, err := SealAnswer(fuzzKey, nonce, 200, json.RawMessage(js), tail)
		require.NoError(f, err)
		f.Add(ans, uint16(200))
	}
	f.Add([]byte("{\"code\":\"unauthorized\",\"error\":\"unauthorized\"}"), uint16(401))
	f.Fuzz(func(t *testing.T, body []byte, status uint16) {
		aead, err := bodyAEAD(fuzzKey, keyring.LabelResponseBody, nonce)
		require.NoError(t, err)
		plain, err := open(aead, body, "status "+strconv.Itoa(int(status)))
		var st Status
		tail, aerr := openAnswer(fuzzKey, nonce, int(status), body, &st)
		if err != nil {
			require.ErrorIs(t, err, ErrSealed)
			require.ErrorIs(t, aerr, ErrSealed)
			require.Nil(t, tail)
			return
		}
		require.True(t, known[string(plain)], "opened an answer nobody sealed")
		if aerr == nil {
			_, want, err := unframe(plain)
			require.NoError(t, err)
			require.Equal(t, string(want), string(tail))
		}
	})
}

// FuzzMessages: every message type decodes any bytes without panicking;
// what decodes encodes to JSON that decodes to the same value (so a
// message relayed or kept in the store means the same after a round), and
// travels sealed in an answer unchanged.
func FuzzMessages(f *testing.F) {
	for _, p := range fuzzPlain(f) {
		js, _, err := unframe(p)
		require.NoError(f, err)
		f.Add(js)
	}
	for _, m := range []any{
		PushManifest{Updates: []Update{{Ref: "refs/heads/master", Old: ZeroID, New: strings.Repeat("1", 40), Force: true}}, Atomic: true, Options: []string{"ci.skip", ""}},
		RefsHeader{Head: "refs/heads/master", AllowForce: true, MaxRefs: 1_000_000},
		RemoteInfo{Repo: "acme/widgets", Branch: "master", SHA: strings.Repeat("a", 40)},
		Status{Held: []uint32{0, 4294967295}, Down: &Down{Salt: "00", ChunkSize: 1 << 62, Chunks: 3}, Timeline: []PhaseTime{{Phase: "x", At: time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.FixedZone("", -(23*3600+59*60)))}}},
	} {
		js, err := json.Marshal(m)
		require.NoError(f, err)
		f.Add(js)
	}
	f.Add([]byte(`{"v":3,"id":"x","chunkSize":-9223372036854775808,"maxBody":9223372036854775807,"inline":true}`))
	f.Add([]byte(`{"updates":[{"ref":"\u0000","old":"\ud800","new":"a"}],"options":null}`))
	f.Add([]byte(`{"timeline":[{"phase":"done","at":"2006-01-02T15:04:05.000000000+23:59"}]}`))
	f.Fuzz(func(t *testing.T, js []byte) {
		for _, typ := range []any{Open{}, Status{}, Down{}, PhaseTime{}, Update{}, PushManifest{}, RefResult{}, RefsHeader{}, RemoteInfo{}, Error{}} {
			v := reflect.New(reflect.TypeOf(typ))
			if json.Unmarshal(js, v.Interface()) != nil {
				continue
			}
			b1, err := json.Marshal(v.Interface())
			require.NoError(t, err, "%T decoded from %q does not encode", typ, js)
			v2 := reflect.New(reflect.TypeOf(typ))
			require.NoError(t, json.Unmarshal(b1, v2.Interface()))
			b2, err := json.Marshal(v2.Interface())
			require.NoError(t, err)
			require.Equal(t, string(b1), string(b2), "%T", typ)

			ans, err := SealAnswer(fuzzKey, "00000000000000000000000000000001", 200, v.Interface(), nil)
			require.NoError(t, err)
			v3 := reflect.New(reflect.TypeOf(typ))
			_, err = openAnswer(fuzzKey, "00000000000000000000000000000001", 200, ans, v3.Interface())
			require.NoError(t, err)
			b3, err := json.Marshal(v3.Interface())
			require.NoError(t, err)
			require.Equal(t, string(b1), string(b3), "%T through a sealed answer", typ)
		}
	})
}
