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
// it. A hook may replace Body, or set Reject to answer the client with
// that status without forwarding anything.
type Request struct {
	Method string
	Path   string // as the client sent it: /api/game/...
	Query  string
	Header http.Header
	Body   []byte
	Reject int
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
const TamperUsage = `MODE [-dir up|down] [-min BYTES] [-path REGEXP] [-skip N] [-count N] [-wait DURATION]
modes: off | flip | truncate | drop | replay | swap | drop-once-after BYTES`

// ParseTamper builds a canned mode from words such as
// "flip -dir up -min 4096" or "drop-once-after 1000000 -path chunk".
// "off" returns nil, which removes any tamper.
func ParseTamper(args []string) (*Tamper, error) {
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
	minSize := fs.Int("min", 0, "touch only bodies longer than this many bytes")
	path := fs.String("path", "", "touch only paths matching this regular expression")
	skip := fs.Int("skip", 0, "let the first N matching bodies pass")
	count := fs.Int("count", 0, "act at most this many times (0: no limit)")
	wait := fs.Duration("wait", 500*time.Millisecond, "swap: how long a request waits for its partner")
	if err := fs.Parse(rest); err != nil {
		return nil, fmt.Errorf("tamper %s: %w; usage: %s", mode, err, TamperUsage)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("tamper %s: unexpected %q; usage: %s", mode, strings.Join(fs.Args(), " "), TamperUsage)
	}
	m := &Match{Min: *minSize, Skip: *skip, Count: *count}
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
	switch mode {
	case "flip":
		return Flip(m), nil
	case "truncate":
		return Truncate(m), nil
	case "drop":
		return Drop(m), nil
	case "replay":
		return Replay(m), nil
	case "swap":
		return Swap(m, *wait), nil
	case "drop-once-after":
		return CutAfter(cut, m), nil
	}
	return nil, fmt.Errorf("unknown tamper mode %q; usage: %s", mode, TamperUsage)
}
