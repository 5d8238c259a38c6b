// Package pktline reads and rewrites git's pkt-line framing (git's
// Documentation/gitprotocol-common.txt) where the relay needs more than to
// pass bytes on.
package pktline

import (
	"bufio"
	"io"
	"strconv"
)

// MaxData is the most sideband data one pkt-line of a protocol v2
// packfile section carries: LARGE_PACKET_MAX (65520) less the four length
// digits and the band byte, as upload-pack itself writes at most.
const MaxData = 65520 - 4 - 1

// Coalesce returns r, a protocol v2 fetch response, with the pack data of
// its packfile section in packets of MaxData bytes instead of those
// upload-pack wrote.
//
// upload-pack sends the pack in a packet for each read of pack-objects'
// output. When the reader keeps up (the relay reads as fast as
// pack-objects writes), each read finds one 8 KiB write: a clone of 25 MiB
// came to git in 1,581 packets instead of the 446 of a direct clone, each
// a wake-up of git's sideband demultiplexer, which ran 167 ms of CPU
// instead of 31.
//
// The pack's bytes, their order and every other packet (section headers,
// progress, errors, flush and delimiter packets, empty keep-alives) pass
// unchanged, so git reads the same response. A packet is held back only
// until the next one comes, which a reader that cuts the answer into
// chunks waits for anyway. Anything that is not a well-formed response
// passes on as it is from there on, for git to judge; a read error is
// returned once what came before it has been handed on.
func Coalesce(r io.Reader) io.Reader {
	return &coalescer{src: bufio.NewReaderSize(r, 2*(MaxData+5))}
}

type coalescer struct {
	src    *bufio.Reader
	srcErr error  // the input's error, once a Peek has met it
	out    []byte // bytes ready to hand on, from off
	off    int
	pend   []byte // pack data not framed yet
	inPack bool   // after a "packfile" section header, before its flush
	raw    bool   // the input broke the framing: copy the rest as it is
	err    error  // what Read returns once out is handed on
}

func (c *coalescer) Read(p []byte) (int, error) {
	for c.off == len(c.out) {
		if c.err != nil {
			return 0, c.err
		}
		c.out, c.off = c.out[:0], 0
		c.step()
	}
	n := copy(p, c.out[c.off:])
	c.off += n
	return n, nil
}

// peek returns the next n bytes of input, or fewer once the input has
// ended or failed. bufio hands an error to one call only: it is kept for
// the end, so that a failure is never taken for a clean end.
func (c *coalescer) peek(n int) []byte {
	b, err := c.src.Peek(n)
	if err != nil && c.srcErr == nil {
		c.srcErr = err
	}
	return b
}

// step reads one packet (or, in raw mode, what there is) and appends to
// out what goes on because of it.
func (c *coalescer) step() {
	if c.raw {
		c.copyRaw()
		return
	}
	hdr := c.peek(4)
	if len(hdr) < 4 {
		c.toRaw()
		return
	}
	n, err := strconv.ParseUint(string(hdr), 16, 16)
	if err != nil || n == 3 || n > 65520 {
		c.toRaw()
		return
	}
	if n < 4 {
		// A flush, delimiter or response-end packet: a flush ends the
		// packfile section.
		c.flush()
		c.out = append(c.out, hdr...)
		c.src.Discard(4)
		if n == 0 {
			c.inPack = false
		}
		return
	}
	pkt := c.peek(int(n))
	if len(pkt) < int(n) {
		c.toRaw() // a packet cut short
		return
	}
	payload := pkt[4:]
	switch {
	case c.inPack && len(payload) > 1 && payload[0] == 1:
		data := payload[1:]
		for len(c.pend)+len(data) >= MaxData {
			k := MaxData - len(c.pend)
			c.pend = append(c.pend, data[:k]...)
			data = data[k:]
			c.flush()
		}
		c.pend = append(c.pend, data...)
	default:
		c.flush()
		c.out = append(c.out, pkt...)
		if !c.inPack && (string(payload) == "packfile\n" || string(payload) == "packfile") {
			c.inPack = true
		}
	}
	c.src.Discard(int(n))
}

// flush frames the pending pack data as one packet.
func (c *coalescer) flush() {
	if len(c.pend) == 0 {
		return
	}
	n := len(c.pend) + 5
	c.out = append(c.out, hexDigits[n>>12&15], hexDigits[n>>8&15], hexDigits[n>>4&15], hexDigits[n&15], 1)
	c.out = append(c.out, c.pend...)
	c.pend = c.pend[:0]
}

// toRaw gives up on the framing (or meets the input's end): what is
// pending goes on, then the rest of the input as it comes.
func (c *coalescer) toRaw() {
	c.flush()
	c.raw = true
	if len(c.out) == 0 {
		c.copyRaw()
	}
}

// copyRaw hands on what the input has, up to its end or failure.
func (c *coalescer) copyRaw() {
	if c.src.Buffered() == 0 && c.srcErr != nil {
		c.err = c.srcErr
		return
	}
	if cap(c.out) < MaxData {
		c.out = make([]byte, 0, MaxData)
	}
	m, err := c.src.Read(c.out[:cap(c.out)])
	c.out = c.out[:m]
	if err != nil {
		c.err = err
	}
}

const hexDigits = "0123456789abcdef"
