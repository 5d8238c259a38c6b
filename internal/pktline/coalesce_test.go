package pktline

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func pkt(s string) string { return fmt.Sprintf("%04x%s", len(s)+4, s) }

func band(b byte, data []byte) string { return pkt(string(append([]byte{b}, data...))) }

// response builds a protocol v2 fetch response whose pack (pack, the
// bytes) comes in packets of step bytes, with a progress line among them.
func response(pack []byte, step int) []byte {
	var b bytes.Buffer
	b.WriteString(pkt("acknowledgments\n") + pkt("NAK\n") + "0001")
	b.WriteString(pkt("packfile\n"))
	b.WriteString(band(2, []byte("Enumerating objects: 3, done.\n")))
	for i := 0; i < len(pack); i += step {
		b.WriteString(band(1, pack[i:min(i+step, len(pack))]))
		if i == 5*step {
			b.WriteString(band(2, []byte("Total 3\n")))
			b.WriteString(pkt("\x01")) // an empty keep-alive
		}
	}
	b.WriteString("0000")
	return b.Bytes()
}

// packets splits a well-formed stream into its packets.
func packets(t *testing.T, b []byte) []string {
	t.Helper()
	var out []string
	for len(b) > 0 {
		require.GreaterOrEqual(t, len(b), 4)
		n, err := strconv.ParseUint(string(b[:4]), 16, 16)
		require.NoError(t, err)
		if n < 4 {
			n = 4
		}
		require.LessOrEqual(t, int(n), 65520, "a packet larger than git reads")
		out = append(out, string(b[:n]))
		b = b[n:]
	}
	return out
}

// canon describes a stream as git reads it: its packets in order, with
// the pack data of a packfile section's runs of band-1 packets joined,
// and whatever follows a break in the framing as it is.
func canon(b []byte) []string {
	var out []string
	inPack := false
	var data []byte
	end := func() {
		if data != nil {
			out = append(out, "pack:"+string(data))
			data = nil
		}
	}
	for len(b) > 0 {
		n, err := strconv.ParseUint(string(b[:min(4, len(b))]), 16, 16)
		if len(b) < 4 || err != nil || n == 3 || n > 65520 || (n >= 4 && int(n) > len(b)) {
			break
		}
		if n < 4 {
			end()
			out = append(out, string(b[:4]))
			if n == 0 {
				inPack = false
			}
			b = b[4:]
			continue
		}
		p := b[4:n]
		if inPack && len(p) > 1 && p[0] == 1 {
			data = append(data, p[1:]...)
		} else {
			end()
			out = append(out, string(b[:n]))
			if string(p) == "packfile\n" || string(p) == "packfile" {
				inPack = true
			}
		}
		b = b[n:]
	}
	end()
	if len(b) > 0 {
		out = append(out, "raw:"+string(b))
	}
	return out
}

func coalesced(t *testing.T, in []byte) []byte {
	t.Helper()
	out, err := io.ReadAll(Coalesce(bytes.NewReader(in)))
	require.NoError(t, err)
	return out
}

func TestCoalesceJoinsPackDataIntoFullPackets(t *testing.T) {
	pack := make([]byte, 300<<10)
	for i := range pack {
		pack[i] = byte(i * 7)
	}
	in := response(pack, 8192)
	out := coalesced(t, in)

	assert.Equal(t, canon(in), canon(out), "git must read the same response")
	got := packets(t, out)
	want := []string{pkt("acknowledgments\n"), pkt("NAK\n"), "0001", pkt("packfile\n"), band(2, []byte("Enumerating objects: 3, done.\n"))}
	require.Greater(t, len(got), len(want))
	assert.Equal(t, want, got[:len(want)], "what comes before the pack passes unchanged")
	assert.Equal(t, "0000", got[len(got)-1])
	// 6 packets of 8 KiB before the progress line, then 300-48 KiB in
	// full packets and one partial.
	assert.Equal(t, band(1, pack[:6*8192]), got[len(want)])
	assert.Equal(t, band(2, []byte("Total 3\n")), got[len(want)+1])
	assert.Equal(t, pkt("\x01"), got[len(want)+2], "an empty keep-alive passes")
	full := 0
	for _, p := range got[len(want)+3 : len(got)-1] {
		if len(p) == MaxData+5 {
			full++
		}
	}
	assert.Equal(t, (len(pack)-6*8192)/MaxData, full)
	assert.Len(t, got, len(want)+3+full+1+1)
}

func TestCoalesceLeavesOtherAnswersAlone(t *testing.T) {
	for name, in := range map[string]string{
		"ls-refs":        pkt("0123456789012345678901234567890123456789 refs/heads/main\n") + "0000",
		"band 1 outside": pkt("\x01not a pack") + pkt("\x01section") + "0000",
		"sideband-all":   pkt("\x01packfile\n") + pkt("\x01abc") + pkt("\x01def") + "0000",
		"after a flush":  pkt("packfile\n") + pkt("\x01ab") + "0000" + pkt("\x01cd") + pkt("\x01ef"),
		"empty":          "",
	} {
		t.Run(name, func(t *testing.T) {
			out := coalesced(t, []byte(in))
			if name == "after a flush" {
				assert.Equal(t, pkt("packfile\n")+pkt("\x01ab")+"0000"+pkt("\x01cd")+pkt("\x01ef"), string(out))
				return
			}
			assert.Equal(t, in, string(out))
		})
	}
}

func TestCoalescePassesBrokenFramingOn(t *testing.T) {
	for name, in := range map[string]string{
		"not hex":       pkt("packfile\n") + pkt("\x01ab") + "zzzz" + pkt("\x01cd"),
		"0003":          pkt("packfile\n") + pkt("\x01ab") + pkt("\x01cd") + "0003rest",
		"cut short":     pkt("packfile\n") + pkt("\x01ab") + pkt("\x01cd") + "00ff\x01partial",
		"half a header": pkt("packfile\n") + pkt("\x01ab") + "00",
	} {
		t.Run(name, func(t *testing.T) {
			out := coalesced(t, []byte(in))
			assert.Equal(t, canon([]byte(in)), canon(out))
		})
	}
}

// A failed read (upload-pack exiting non-zero) ends the stream with its
// error after everything read before it, never with io.EOF.
func TestCoalesceReturnsTheInputsError(t *testing.T) {
	boom := errors.New("upload-pack: fatal")
	in := response(bytes.Repeat([]byte("x"), 100<<10), 1000)
	for _, cut := range []int{0, 3, 40, len(in) / 2, len(in) - 2, len(in)} {
		r := Coalesce(io.MultiReader(bytes.NewReader(in[:cut]), iotest.ErrReader(boom)))
		out, err := io.ReadAll(r)
		require.ErrorIs(t, err, boom, "cut at %d", cut)
		if cut == len(in) {
			assert.Equal(t, canon(in), canon(out))
		}
		_, err = r.Read(make([]byte, 10))
		assert.ErrorIs(t, err, boom, "the error stays")
	}
}

// One byte at a time in, the same out.
func TestCoalesceOneByteReads(t *testing.T) {
	in := response(bytes.Repeat([]byte("0123456789"), 20<<10), 3000)
	out, err := io.ReadAll(iotest.OneByteReader(Coalesce(iotest.OneByteReader(bytes.NewReader(in)))))
	require.NoError(t, err)
	assert.Equal(t, canon(in), canon(out))
	assert.Less(t, len(packets(t, out)), len(packets(t, in))/5)
}

func FuzzCoalesce(f *testing.F) {
	f.Add(response([]byte("PACK\x00\x00\x00\x02"), 3))
	f.Add([]byte(pkt("packfile\n") + pkt("\x01ab") + "0003rest"))
	f.Add([]byte(pkt("packfile") + pkt("\x01") + pkt("\x02x") + "0001" + pkt("\x01y")))
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := io.ReadAll(Coalesce(bytes.NewReader(in)))
		if err != nil {
			t.Fatal(err)
		}
		if !assert.Equal(t, canon(in), canon(out)) {
			t.FailNow()
		}
		if len(out) > len(in) {
			t.Fatalf("%d bytes out of %d", len(out), len(in))
		}
	})
}
