package edgeproxy

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"strings"

	"github.com/klauspost/compress/zstd"
)

// Markers open every git bundle and every pack. Repository content that
// crosses the proxy unencrypted carries one of them.
var Markers = []string{
	"# v2 git bundle\n",
	"# v3 git bundle\n",
	"PACK\x00\x00\x00\x02",
	"PACK\x00\x00\x00\x03",
}

// stems are parts that every marker contains one of. A body in which no
// encoding of a stem appears cannot hold a marker, so the full scan, which
// names what it finds, runs only on a body that the stems flag: a chunk of
// ciphertext is checked with a third of the passes.
var stems = []string{" git bundle\n", "PACK\x00\x00\x00"}

type needle struct {
	name string
	b    []byte
}

// needles are the markers in every encoding a careless client might use to
// put binary content into a body: raw, hex, and standard or URL-safe base64
// at each of the three alignments a marker can have inside a longer
// encoded stream.
var (
	needles     = buildNeedles(Markers)
	stemNeedles = buildNeedles(stems)
)

func buildNeedles(markers []string) []needle {
	var out []needle
	seen := map[string]bool{}
	add := func(name string, b []byte) {
		if len(b) == 0 || seen[string(b)] {
			return
		}
		seen[string(b)] = true
		out = append(out, needle{name: name, b: b})
	}
	for _, m := range markers {
		label := strings.TrimSpace(strings.TrimPrefix(m, "# "))
		if strings.HasPrefix(m, "PACK") && len(m) > 7 {
			label = fmt.Sprintf("PACK v%d", m[7])
		}
		add(fmt.Sprintf("%q raw", label), []byte(m))
		add(fmt.Sprintf("%q hex", label), []byte(hex.EncodeToString([]byte(m))))
		add(fmt.Sprintf("%q HEX", label), []byte(strings.ToUpper(hex.EncodeToString([]byte(m)))))
		for _, enc := range []struct {
			name string
			e    *base64.Encoding
		}{{"base64", base64.RawStdEncoding}, {"base64url", base64.RawURLEncoding}} {
			for align := range 3 {
				add(fmt.Sprintf("%q %s (offset %d)", label, enc.name, align), base64Core(enc.e, []byte(m), align))
			}
		}
	}
	return out
}

// base64Core returns the characters of the encoding of m that depend on m
// alone when m starts align bytes into a 3-byte group: whatever surrounds
// m in a larger stream, those characters appear verbatim.
func base64Core(e *base64.Encoding, m []byte, align int) []byte {
	in := append(make([]byte, align), m...)
	s := e.EncodeToString(in)
	startBits, endBits := 8*align, 8*len(in)
	first := (startBits + 5) / 6 // first character lying wholly inside m
	last := endBits / 6          // one past the last such character
	if last > len(s) {
		last = len(s)
	}
	return []byte(s[first:last])
}

// maxInflate bounds how much a compressed body is expanded for scanning.
const maxInflate = 256 << 20

// ScanPlaintext returns a description of every bundle or pack marker found
// in body, in any encoding. When contentEncoding is gzip or zstd, the
// decoded body is scanned as well, since a transfer compression hides
// nothing from whoever holds the body.
func ScanPlaintext(body []byte, contentEncoding string) []string {
	found := scan(body)
	var dec io.Reader
	switch strings.ToLower(strings.TrimSpace(contentEncoding)) {
	case "gzip", "x-gzip":
		if zr, err := gzip.NewReader(bytes.NewReader(body)); err == nil {
			dec = zr
		}
	case "zstd":
		if zr, err := zstd.NewReader(bytes.NewReader(body)); err == nil {
			defer zr.Close()
			dec = zr
		}
	}
	if dec != nil {
		plain, _ := io.ReadAll(io.LimitReader(dec, maxInflate))
		for _, f := range scan(plain) {
			found = append(found, f+" after "+contentEncoding+" decoding")
		}
	}
	return found
}

func scan(body []byte) []string {
	flagged := false
	for _, n := range stemNeedles {
		if bytes.Contains(body, n.b) {
			flagged = true
			break
		}
	}
	if !flagged {
		return nil
	}
	var found []string
	for _, n := range needles {
		if i := bytes.Index(body, n.b); i >= 0 {
			found = append(found, fmt.Sprintf("%s at byte %d", n.name, i))
		}
	}
	return found
}
