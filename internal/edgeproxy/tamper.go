package edgeproxy

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Request is a request on its way through the proxy, as a Tamper hook sees
// it. A hook may replace Body, set Reject to answer the client with that
// status without forwarding anything, or set Hangup to drop the client's
// connection without forwarding anything or answering.
type Request struct {
	Method string
	Path   string // as the client sent it: /api/game/...
	Query  string
	Header http.Header
	Body   []byte
	Reject int
	Hangup bool
	// Done is closed when the client gives up on the request.
	Done <-chan struct{}
}

// Response is a response on its way back. A hook may replace Body, or set
// CutAfter to a byte count (-1 means off): the client then gets the full
// headers, that many bytes of the body, and a broken connection.
type Response struct {
	Status   int
	Header   http.Header
	Body     []byte
	CutAfter int
}

// Tamper is the hostile edge of the threat model. Either hook may be nil.
// Hooks run concurrently when requests do, so they guard their own state.
type Tamper struct {
	Name       string
	OnRequest  func(req *Request)
	OnResponse func(req *Request, resp *Response)
}

// Match selects the traffic a canned tamper mode acts on.
type Match struct {
	// Dir is Up, Down or "" for both.
	Dir Direction
	// Min: only bodies longer than Min bytes are touched.
	Min int
	// Path, when set, must match the client path. For replay and swap, the
	// matched text is also the key that pairs requests, so "chunk" pairs
	// every chunk upload with the one before it.
	Path *regexp.Regexp
	// Method, when set, must be the request's method.
	Method string
	// Query, when set, must match the request's raw query.
	Query *regexp.Regexp
	// Skip lets the first Skip matching bodies pass untouched.
	Skip int
	// Count caps how many times the mode acts (0: no limit).
	Count int

	mu      sync.Mutex
	skipped int
	done    int
}

func (m *Match) key(req *Request, dir Direction, body []byte) (string, bool) {
	if m.Dir != "" && m.Dir != dir {
		return "", false
	}
	if len(body) <= m.Min {
		return "", false
	}
	if m.Method != "" && !strings.EqualFold(m.Method, req.Method) {
		return "", false
	}
	if m.Query != nil && !m.Query.MatchString(req.Query) {
		return "", false
	}
	key := req.Method + " " + req.Path
	if m.Path != nil {
		s := m.Path.FindString(req.Path)
		if s == "" && !m.Path.MatchString(req.Path) {
			return "", false
		}
		key = req.Method + " " + s
	}
	return key, true
}

// exchange reports whether a mode that acts on whole exchanges (spoil,
// drop-request) applies: the method and path match, whatever the bodies
// are, unless Min asks for a request body longer than Min bytes.
func (m *Match) exchange(req *Request) bool {
	if m.Method != "" && !strings.EqualFold(m.Method, req.Method) {
		return false
	}
	if m.Path != nil && !m.Path.MatchString(req.Path) {
		return false
	}
	if m.Query != nil && !m.Query.MatchString(req.Query) {
		return false
	}
	return m.Min == 0 || len(req.Body) > m.Min
}

// take reports whether the mode may act once more, and counts it.
func (m *Match) take() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.skipped < m.Skip {
		m.skipped++
		return false
	}
	if m.Count > 0 && m.done >= m.Count {
		return false
	}
	m.done++
	return true
}

// Flip flips every bit of the byte in the middle of each matching body.
func Flip(m *Match) *Tamper {
	flip := func(b []byte) []byte {
		b = slices.Clone(b)
		b[len(b)/2] ^= 0xff
		return b
	}
	return &Tamper{
		Name: "flip",
		OnRequest: func(req *Request) {
			if _, ok := m.key(req, Up, req.Body); ok && len(req.Body) > 0 && m.take() {
				req.Body = flip(req.Body)
			}
		},
		OnResponse: func(req *Request, resp *Response) {
			if _, ok := m.key(req, Down, resp.Body); ok && len(resp.Body) > 0 && m.take() {
				resp.Body = flip(resp.Body)
			}
		},
	}
}

// Truncate cuts each matching body to half its length.
func Truncate(m *Match) *Tamper {
	return &Tamper{
		Name: "truncate",
		OnRequest: func(req *Request) {
			if _, ok := m.key(req, Up, req.Body); ok && m.take() {
				req.Body = req.Body[:len(req.Body)/2]
			}
		},
		OnResponse: func(req *Request, resp *Response) {
			if _, ok := m.key(req, Down, resp.Body); ok && m.take() {
				resp.Body = resp.Body[:len(resp.Body)/2]
			}
		},
	}
}

// Drop answers matching requests with 502 without forwarding them, as an
// edge does when the function crashes or times out.
func Drop(m *Match) *Tamper {
	return &Tamper{
		Name: "drop",
		OnRequest: func(req *Request) {
			if _, ok := m.key(req, Up, req.Body); ok && m.take() {
				req.Reject = http.StatusBadGateway
			}
		},
	}
}

// DropRequest never forwards matching requests, whatever their bodies, so
// the relay never sees them: the client gets status (502 when 0), or, with
// hangup, a connection dropped without an answer, as when the edge's
// function crashes or the network breaks.
func DropRequest(m *Match, status int, hangup bool) *Tamper {
	if status == 0 {
		status = http.StatusBadGateway
	}
	return &Tamper{
		Name: "drop-request",
		OnRequest: func(req *Request) {
			if m.exchange(req) && m.take() {
				if hangup {
					req.Hangup = true
				} else {
					req.Reject = status
				}
			}
		},
	}
}

// Freeze holds matching requests without forwarding or answering them,
// as a proxy that hangs does (not one that closes), for up to wait; then
// it drops the connection.
func Freeze(m *Match, wait time.Duration) *Tamper {
	return &Tamper{
		Name: "freeze",
		OnRequest: func(req *Request) {
			if m.exchange(req) && m.take() {
				t := time.NewTimer(wait)
				defer t.Stop()
				select {
				case <-t.C:
				case <-req.Done:
				}
				req.Hangup = true
			}
		},
	}
}

// Delay holds matching requests for wait, then forwards them, as a slow
// link does with the last of an upload.
func Delay(m *Match, wait time.Duration) *Tamper {
	return &Tamper{
		Name: "delay",
		OnRequest: func(req *Request) {
			if m.exchange(req) && m.take() {
				t := time.NewTimer(wait)
				defer t.Stop()
				select {
				case <-t.C:
				case <-req.Done:
				}
			}
		},
	}
}

// Ways Spoil can spoil an answer.
const (
	// SpoilSignature changes one character of the X-Relay-Signature header
	// (or adds a bogus one): the answer no longer authenticates.
	SpoilSignature = "sig"
	// SpoilByte flips one byte in the middle of the body (the signature,
	// when the body is empty).
	SpoilByte = "byte"
	// SpoilStatus replaces the whole answer with a 502, as a platform does
	// when the function fails after the relay has done the work.
	SpoilStatus = "502"
)

// Spoil forwards matching requests, so the relay does the work, and then
// spoils their answers the way how says: the keyless proxy of the threat
// model that turns every success into a failure the client must retry.
func Spoil(m *Match, how string) *Tamper {
	return &Tamper{
		Name: "spoil " + how,
		OnResponse: func(req *Request, resp *Response) {
			if !m.exchange(req) || !m.take() {
				return
			}
			switch {
			case how == SpoilStatus:
				resp.Status = http.StatusBadGateway
				resp.Header = http.Header{"Content-Type": {"text/plain; charset=utf-8"}}
				resp.Body = []byte("edgeproxy: spoiled\n")
			case how == SpoilByte && len(resp.Body) > 0:
				resp.Body = slices.Clone(resp.Body)
				resp.Body[len(resp.Body)/2] ^= 0xff
			default:
				resp.Header.Set(signatureHeader, spoilSignature(resp.Header.Get(signatureHeader)))
			}
		},
	}
}

// signatureHeader is where the relay signs its answers (wire.HeaderSignature).
const signatureHeader = "X-Relay-Signature"

// spoilSignature changes the last character of a hex signature into
// another hex digit, so that it still looks like one.
func spoilSignature(sig string) string {
	if sig == "" {
		return strings.Repeat("0", 64)
	}
	last := sig[len(sig)-1]
	repl := byte('0')
	if last == '0' {
		repl = '1'
	}
	return sig[:len(sig)-1] + string(repl)
}

// Replay forwards, in place of each matching request body, the body of the
// previous request with the same key (the first one passes unchanged).
func Replay(m *Match) *Tamper {
	var mu sync.Mutex
	prev := map[string][]byte{}
	return &Tamper{
		Name: "replay",
		OnRequest: func(req *Request) {
			key, ok := m.key(req, Up, req.Body)
			if !ok {
				return
			}
			mu.Lock()
			old, seen := prev[key]
			prev[key] = slices.Clone(req.Body)
			mu.Unlock()
			if seen && m.take() {
				req.Body = old
			}
		},
	}
}

// Swap exchanges the bodies of two consecutive matching requests with the
// same key. A request waits up to wait for its partner; when uploads are
// sequential the partner never comes while it waits, so the first request
// passes unchanged and the second carries the first one's body.
func Swap(m *Match, wait time.Duration) *Tamper {
	type pending struct {
		body    []byte
		partner chan []byte
	}
	var mu sync.Mutex
	waiting := map[string]*pending{}
	held := map[string][]byte{}
	return &Tamper{
		Name: "swap",
		OnRequest: func(req *Request) {
			key, ok := m.key(req, Up, req.Body)
			if !ok {
				return
			}
			mu.Lock()
			if p := waiting[key]; p != nil {
				delete(waiting, key)
				mu.Unlock()
				p.partner <- slices.Clone(req.Body)
				req.Body = p.body
				return
			}
			if old, ok := held[key]; ok {
				delete(held, key)
				mu.Unlock()
				if m.take() {
					req.Body = old
				}
				return
			}
			if m.Count > 0 {
				m.mu.Lock()
				spent := m.done >= m.Count
				m.mu.Unlock()
				if spent {
					mu.Unlock()
					return
				}
			}
			p := &pending{body: slices.Clone(req.Body), partner: make(chan []byte, 1)}
			waiting[key] = p
			mu.Unlock()
			select {
			case other := <-p.partner:
				m.take()
				req.Body = other
			case <-time.After(wait):
				mu.Lock()
				if waiting[key] == p {
					delete(waiting, key)
					held[key] = p.body
					mu.Unlock()
					return
				}
				mu.Unlock()
				// The partner arrived just as we gave up.
				m.take()
				req.Body = <-p.partner
			}
		},
	}
}

// CutAfter breaks the connection of matching responses longer than n bytes
// after sending their first n bytes (Count 0 means once).
func CutAfter(n int, m *Match) *Tamper {
	if m.Count == 0 {
		m.Count = 1
	}
	return &Tamper{
		Name: fmt.Sprintf("drop-once-after %d", n),
		OnResponse: func(req *Request, resp *Response) {
			if _, ok := m.key(req, Down, resp.Body); ok && len(resp.Body) > n && m.take() {
				resp.CutAfter = n
			}
		},
	}
}

// TamperUsage describes the canned modes ParseTamper accepts.
const TamperUsage = `MODE [FLAGS] [+ MODE [FLAGS]...] (several modes act in turn); FLAGS: [-dir up|down] [-method METHOD] [-path REGEXP] [-query REGEXP] [-min BYTES] [-skip N] [-count N] [-wait DURATION] [-how sig|byte|502] [-reply STATUS|hangup]
modes:
  off                    remove the tamper
  flip                   flip every bit of the middle byte of each matching body
  truncate               cut each matching body to half its length
  drop                   answer 502 to matching requests that carry a body, without forwarding them
  drop-request           never forward matching requests (with or without a body), so the relay never
                         sees them; answer -reply STATUS (default 502) or, with -reply hangup, drop the
                         connection without an answer
  spoil                  forward matching requests, then spoil their answers: -how sig (the default)
                         changes the X-Relay-Signature header, -how byte flips one body byte, -how 502
                         replaces the answer with a 502
  replay                 forward the previous matching request's body in place of each one
  swap                   exchange the bodies of two consecutive matching requests (-wait for the partner)
  drop-once-after BYTES  cut a matching response off after BYTES bytes (once unless -count)
  delay                  hold matching requests for -wait, then forward them
  freeze                 hold matching requests without an answer, as a hung proxy does, for -wait
                         (then drop the connection); give -wait 10m for a proxy that never answers
matching: -path REGEXP on the client path (/api/game/...), -query REGEXP on its raw query, -method METHOD, -dir up|down (body modes),
-min BYTES (bodies longer than that), -skip N lets the first N matches pass, -count N acts at most N
times (0: every time)`

// ParseTamper builds a canned mode from words such as
// "flip -dir up -min 4096", "spoil -method POST -path push$ -count 5" or
// "drop-once-after 1000000 -path chunk". "off" returns nil, which removes
// any tamper.
func ParseTamper(args []string) (*Tamper, error) {
	// MODE ... + MODE ...: several modes at once, in order.
	for i, a := range args {
		if a == "+" {
			first, err := ParseTamper(args[:i])
			if err != nil {
				return nil, err
			}
			rest, err := ParseTamper(args[i+1:])
			if err != nil {
				return nil, err
			}
			if first == nil || rest == nil {
				return nil, fmt.Errorf("tamper mode off cannot be combined")
			}
			return Chain(first, rest), nil
		}
	}
	return parseOne(args)
}

// Chain runs the tampers one after the other on every exchange.
func Chain(ts ...*Tamper) *Tamper {
	var names []string
	for _, t := range ts {
		names = append(names, t.Name)
	}
	return &Tamper{
		Name: strings.Join(names, " + "),
		OnRequest: func(req *Request) {
			for _, t := range ts {
				if t.OnRequest != nil {
					t.OnRequest(req)
				}
			}
		},
		OnResponse: func(req *Request, resp *Response) {
			for _, t := range ts {
				if t.OnResponse != nil {
					t.OnResponse(req, resp)
				}
			}
		},
	}
}

func parseOne(args []string) (*Tamper, error) {
	if len(args) == 0 {
		return nil, fmt.Errorf("tamper mode missing; usage: %s", TamperUsage)
	}
	mode, rest := args[0], args[1:]
	if mode == "off" {
		if len(rest) > 0 {
			return nil, fmt.Errorf("tamper mode off takes no arguments")
		}
		return nil, nil
	}
	cut := -1
	if mode == "drop-once-after" {
		if len(rest) == 0 {
			return nil, fmt.Errorf("drop-once-after needs a byte count")
		}
		n, err := strconv.Atoi(rest[0])
		if err != nil || n < 0 {
			return nil, fmt.Errorf("drop-once-after %q: want a byte count", rest[0])
		}
		cut, rest = n, rest[1:]
	}
	fs := flag.NewFlagSet(mode, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	dir := fs.String("dir", "", "up, down or both (default both)")
	method := fs.String("method", "", "touch only requests with this method")
	minSize := fs.Int("min", 0, "touch only bodies longer than this many bytes")
	path := fs.String("path", "", "touch only paths matching this regular expression")
	query := fs.String("query", "", "touch only requests whose raw query matches this regular expression")
	skip := fs.Int("skip", 0, "let the first N matching bodies pass")
	count := fs.Int("count", 0, "act at most this many times (0: no limit)")
	wait := fs.Duration("wait", 500*time.Millisecond, "swap: how long a request waits for its partner")
	how := fs.String("how", SpoilSignature, "spoil: sig, byte or 502")
	reply := fs.String("reply", "502", "drop-request: the status to answer, or hangup")
	if err := fs.Parse(rest); err != nil {
		return nil, fmt.Errorf("tamper %s: %w; usage: %s", mode, err, TamperUsage)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("tamper %s: unexpected %q; usage: %s", mode, strings.Join(fs.Args(), " "), TamperUsage)
	}
	if *skip < 0 || *count < 0 || *minSize < 0 {
		return nil, fmt.Errorf("tamper %s: -skip, -count and -min take numbers of 0 or more", mode)
	}
	m := &Match{Min: *minSize, Skip: *skip, Count: *count, Method: strings.ToUpper(*method)}
	switch *dir {
	case "", "both":
	case "up":
		m.Dir = Up
	case "down":
		m.Dir = Down
	default:
		return nil, fmt.Errorf("tamper %s: -dir %q: want up, down or both", mode, *dir)
	}
	if *path != "" {
		re, err := regexp.Compile(*path)
		if err != nil {
			return nil, fmt.Errorf("tamper %s: -path: %w", mode, err)
		}
		m.Path = re
	}
	if *query != "" {
		re, err := regexp.Compile(*query)
		if err != nil {
			return nil, fmt.Errorf("tamper %s: -query: %w", mode, err)
		}
		m.Query = re
	}
	switch mode {
	case "flip":
		return Flip(m), nil
	case "truncate":
		return Truncate(m), nil
	case "drop":
		return Drop(m), nil
	case "drop-request":
		if *reply == "hangup" {
			return DropRequest(m, 0, true), nil
		}
		status, err := strconv.Atoi(*reply)
		if err != nil || status < 100 || status > 599 {
			return nil, fmt.Errorf("tamper drop-request: -reply %q: want an HTTP status or hangup", *reply)
		}
		return DropRequest(m, status, false), nil
	case "spoil":
		switch *how {
		case SpoilSignature, SpoilByte, SpoilStatus:
		default:
			return nil, fmt.Errorf("tamper spoil: -how %q: want sig, byte or 502", *how)
		}
		return Spoil(m, *how), nil
	case "replay":
		return Replay(m), nil
	case "swap":
		return Swap(m, *wait), nil
	case "drop-once-after":
		return CutAfter(cut, m), nil
	case "freeze":
		return Freeze(m, *wait), nil
	case "delay":
		return Delay(m, *wait), nil
	}
	return nil, fmt.Errorf("unknown tamper mode %q; usage: %s", mode, TamperUsage)
}
