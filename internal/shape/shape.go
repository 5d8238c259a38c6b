// Package shape slows traffic down to a wide-area link's bandwidth and
// latency, for benchmarks and tests that must not run at loopback speed:
// the edge proxy between git-remote-relay and the relay server, and the
// git host behind the relay.
//
// A Link is a rate in bytes per second and a one-way latency. NewReader
// and NewWriter pace a byte stream at the rate. Listener wraps a
// net.Listener so that every connection it accepts behaves as if the peer
// were far away: each burst of bytes that starts a new turn of the
// conversation (a request arriving, an answer leaving) is held back by the
// latency, and the bytes themselves flow at the rate. HTTP/1.1 talks in
// such turns, so a request and its answer cost one round trip (twice the
// latency) plus their sizes over the rate, as on a real link; a connection
// on which both sides talk at once pays the latency each time the
// direction changes, which overstates it.
package shape

import (
	"io"
	"net"
	"sync"
	"time"
)

// Mbit is one megabit per second, in bytes per second: 50 Mbit/s is
// Link{Rate: 50 * shape.Mbit}.
const Mbit = 1_000_000 / 8

// Link is one direction of a shaped link.
type Link struct {
	// Rate caps the bytes per second (0: no cap).
	Rate int64
	// Latency delays the start of every turn (0: none).
	Latency time.Duration
}

// IsZero reports whether the link changes nothing.
func (l Link) IsZero() bool { return l.Rate <= 0 && l.Latency <= 0 }

// slack is how far behind its schedule a pacer may fall (the scheduler
// woke it late on a busy machine, or the stream paused) and still catch up
// with a burst. Beyond it the stream counts as idle and restarts at the
// rate, so that a pause never buys a burst larger than slack's worth of
// bytes.
const slack = 50 * time.Millisecond

// tick is the pacing granularity: each read or write moves at most this
// long's worth of bytes, so that the rate holds over short spans too.
const tick = 10 * time.Millisecond

// pacer spreads bytes out in time at a fixed rate. It is safe for
// concurrent use; concurrent callers share the rate.
type pacer struct {
	rate float64 // bytes per second

	mu   sync.Mutex
	next time.Time // when the stream is due to have sent what it has
}

func newPacer(rate int64) *pacer {
	if rate <= 0 {
		return nil
	}
	return &pacer{rate: float64(rate)}
}

// chunk is the most bytes one operation may move.
func (p *pacer) chunk(n int) int {
	if p == nil {
		return n
	}
	c := max(int(p.rate*tick.Seconds()), 512)
	return min(n, c)
}

// wait accounts for n bytes and sleeps until the schedule allows them.
func (p *pacer) wait(n int) {
	if p == nil || n <= 0 {
		return
	}
	p.mu.Lock()
	now := time.Now()
	if p.next.IsZero() || now.Sub(p.next) > slack {
		p.next = now
	}
	p.next = p.next.Add(time.Duration(float64(n) / p.rate * float64(time.Second)))
	d := p.next.Sub(now)
	p.mu.Unlock()
	if d > 0 {
		time.Sleep(d)
	}
}

// NewReader returns a reader that delivers r's bytes at rate bytes per
// second at most (rate 0 returns r).
func NewReader(r io.Reader, rate int64) io.Reader {
	p := newPacer(rate)
	if p == nil {
		return r
	}
	return &reader{r: r, p: p}
}

type reader struct {
	r io.Reader
	p *pacer
}

func (r *reader) Read(b []byte) (int, error) {
	n, err := r.r.Read(b[:r.p.chunk(len(b))])
	r.p.wait(n)
	return n, err
}

// NewWriter returns a writer that passes bytes on to w at rate bytes per
// second at most (rate 0 returns w).
func NewWriter(w io.Writer, rate int64) io.Writer {
	p := newPacer(rate)
	if p == nil {
		return w
	}
	return &writer{w: w, p: p}
}

type writer struct {
	w io.Writer
	p *pacer
}

func (w *writer) Write(b []byte) (int, error) {
	return pacedWrite(w.w, w.p, b)
}

func pacedWrite(w io.Writer, p *pacer, b []byte) (int, error) {
	done := 0
	for done < len(b) {
		c := b[done : done+p.chunk(len(b)-done)]
		p.wait(len(c))
		n, err := w.Write(c)
		done += n
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// Listener shapes every connection ln accepts: in applies to the bytes the
// listening side receives, out to the bytes it sends. The connections
// share one rate each way, as the connections of one client share its
// link: a client that opens three connections at once (the relay's helper
// moves three chunks at a time) gets the link's bandwidth, not three
// times it. Each connection waits the latency on its own. A zero pair
// returns ln itself.
func Listener(ln net.Listener, in, out Link) net.Listener {
	if in.IsZero() && out.IsZero() {
		return ln
	}
	return &listener{Listener: ln, in: in, out: out, inPace: newPacer(in.Rate), outPace: newPacer(out.Rate)}
}

type listener struct {
	net.Listener
	in, out         Link
	inPace, outPace *pacer
}

func (l *listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &conn{Conn: c, in: l.in, out: l.out, inPace: l.inPace, outPace: l.outPace}, nil
}

// Conn shapes one connection: in applies to what c reads, out to what it
// writes.
func Conn(c net.Conn, in, out Link) net.Conn {
	if in.IsZero() && out.IsZero() {
		return c
	}
	return &conn{Conn: c, in: in, out: out, inPace: newPacer(in.Rate), outPace: newPacer(out.Rate)}
}

// Directions a conn last moved bytes in.
const (
	idle = iota
	reading
	writing
)

type conn struct {
	net.Conn
	in, out         Link
	inPace, outPace *pacer

	mu   sync.Mutex
	last int // reading, writing or idle: which way the conversation went last
}

// turn records that bytes move in dir and reports whether that starts a
// new turn of the conversation.
func (c *conn) turn(dir int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	fresh := c.last != dir
	c.last = dir
	return fresh
}

// Read delays the first bytes of each turn by the inbound latency, once
// they have arrived: a read that waits for a request that comes later does
// not count the wait as latency.
func (c *conn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b[:c.inPace.chunk(len(b))])
	if n > 0 {
		if c.turn(reading) && c.in.Latency > 0 {
			time.Sleep(c.in.Latency)
		}
		c.inPace.wait(n)
	}
	return n, err
}

// Write holds the first bytes of each turn back by the outbound latency,
// then sends at the outbound rate.
func (c *conn) Write(b []byte) (int, error) {
	if len(b) == 0 {
		return c.Conn.Write(b)
	}
	if c.turn(writing) && c.out.Latency > 0 {
		time.Sleep(c.out.Latency)
	}
	if c.outPace == nil {
		return c.Conn.Write(b)
	}
	return pacedWrite(c.Conn, c.outPace, b)
}
