package helper

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/git-relay/git-relay/internal/payload"
	"github.com/git-relay/git-relay/internal/seal"
	"github.com/git-relay/git-relay/internal/wire"
)

// Fetches tunnel git's own protocol version 2 through the relay, as git's
// HTTP transport does (the stateless-connect capability): git writes one
// request at a time (ls-refs, or a round of fetch), the helper carries it
// to the server in an exchange, and the server's git upload-pack answers
// it from the relay's mirror of upstream. So negotiation, --depth and
// --shallow-since, --filter for partial clones, include-tag and peeled
// tags in ls-remote all come from git itself. Every request and answer is
// sealed, and an answer larger than a body comes in chunks that stream to
// git as they authenticate, with the end of the pack held back until the
// whole answer has checked out.

// maxAnswer bounds one answer of upload-pack.
const maxAnswer = 1 << 40

// answerWrite is the size of the helper's writes of an answer to git.
const answerWrite = 256 << 10

// connect serves `stateless-connect <service>`.
func (h *Helper) connect(ctx context.Context, service string, in *bufio.Reader, out *bufio.Writer) error {
	if service != "git-upload-pack" {
		return fmt.Errorf("%s is not available through the relay", service)
	}
	// The connection is established: from here on, stdin and stdout carry
	// git's protocol.
	if _, err := out.WriteString("\n"); err != nil {
		return err
	}
	if err := out.Flush(); err != nil {
		return err
	}
	// The capabilities exchange has the relay refresh its mirror for the
	// listing and fetches that come next, which name it.
	follows, err := h.answer(ctx, wire.KindCaps, nil, "", out)
	if err != nil {
		return err
	}
	if err := out.Flush(); err != nil {
		return err
	}
	for {
		req, err := readRequest(in)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if _, err := h.answer(ctx, wire.KindFetch, req, follows, out); err != nil {
			return err
		}
		// The end of one answer, as git's stateless transports mark it.
		if _, err := out.WriteString("0002"); err != nil {
			return err
		}
		if err := out.Flush(); err != nil {
			return err
		}
	}
}

// readRequest reads one request of git's: pkt-lines up to a flush-pkt,
// which it includes.
func readRequest(in *bufio.Reader) ([]byte, error) {
	var req bytes.Buffer
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(in, hdr[:]); err != nil {
			if err == io.EOF && req.Len() == 0 {
				return nil, io.EOF
			}
			return nil, fmt.Errorf("read git's request: %w", err)
		}
		n, err := strconv.ParseUint(string(hdr[:]), 16, 16)
		if err != nil {
			return nil, fmt.Errorf("read git's request: bad pkt-line length %q", hdr[:])
		}
		req.Write(hdr[:])
		switch {
		case n == 0:
			return req.Bytes(), nil
		case n < 4:
			continue // a delimiter
		}
		if _, err := io.CopyN(&req, in, int64(n-4)); err != nil {
			return nil, fmt.Errorf("read git's request: %w", err)
		}
		if req.Len() > maxRequest {
			return nil, errors.New("git's request is larger than the relay carries")
		}
	}
}

// maxRequest bounds one request of git's.
const maxRequest = 64 << 20

// answer runs one exchange of kind with request (nil for none) and copies
// its answer to out; it returns the exchange's id. A request names the
// capabilities exchange it follows (wire.Open.Follows). An answer too
// large for one body comes in chunks; those of a fetch are kept under the
// git dir as they come, so that the same fetch, interrupted and run
// again, downloads only what it lacks.
func (h *Helper) answer(ctx context.Context, kind string, request []byte, follows string, out io.Writer) (string, error) {
	var x *exchange
	var cache *fetchCache
	dir := ""
	if kind == wire.KindFetch && isFetchCommand(request) {
		dir = h.resumeDir("fetch", request)
		if raw, c := findFetchCache(dir); raw != nil {
			if rx, err := h.exchangeFrom(raw); err == nil {
				x, cache = rx, c
				h.ui.detail("resuming the interrupted fetch %s", x.id)
			} else {
				c.remove()
			}
		}
	}
	for attempt := 0; ; attempt++ {
		if x == nil {
			var err error
			x, err = h.newRequestExchange(kind, request, follows)
			if err != nil {
				return "", err
			}
		}
		st, tail, err := h.ask(ctx, x, request)
		if err != nil {
			if cache == nil || attempt > 0 {
				h.gaveUp(x, cache, err)
				return "", err
			}
		} else if st.Phase == wire.PhaseFailed || st.Phase == wire.PhaseCancelled {
			if cache == nil || attempt > 0 {
				return "", fmt.Errorf("%s: %s", h.repo, st.Message)
			}
		} else {
			if cache == nil && dir != "" && st.Down != nil && !st.Down.Inline {
				cache = newFetchCache(dir, x.raw)
			}
			r, err := x.download(ctx, st, tail, maxAnswer, cache)
			if err != nil {
				return "", err
			}
			err = copyAnswer(out, r)
			r.Close()
			if err != nil {
				h.gaveUp(x, cache, err)
				return "", h.explain(err)
			}
			cache.remove()
			return x.id, nil
		}
		// The interrupted exchange is gone from the relay: ask anew.
		cache.remove()
		x, cache = nil, nil
	}
}

// copyAnswer copies an answer to out, through out's buffer (which writes
// answerWrite at a time), and flushes it whenever the next read would wait
// for a chunk: git gets what came as soon as it came. The first chunk
// holds the start of the pack, on which git starts index-pack; left in the
// buffer, it would wait for the second chunk.
func copyAnswer(out io.Writer, r io.Reader) error {
	f, _ := out.(interface{ Flush() error })
	w, _ := r.(interface{ Waits() bool })
	buf := make([]byte, 64<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if _, werr := out.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if f != nil && w != nil && w.Waits() {
			if err := f.Flush(); err != nil {
				return err
			}
		}
	}
}

// gaveUp ends a read exchange that failed: one cut off on the way (the
// relay unreachable, a stall) keeps its downloaded chunks for the next run
// to resume; one the user interrupted, or that failed for good, is
// cancelled at the relay and leaves nothing behind here.
func (h *Helper) gaveUp(x *exchange, cache *fetchCache, err error) {
	if errors.Is(err, wire.ErrUnreachable) || errors.Is(err, wire.ErrStalled) {
		return
	}
	x.cancel()
	cache.remove()
}

// inlineMax is the largest payload that goes in its exchange's Open: a
// body's worth, less room for the message and the sealing.
func inlineMax(maxBody int64) int { return int(maxBody) - 8<<10 }

// isFetchCommand says whether a request of git's is a fetch (whose answer
// may carry a pack) rather than a listing.
func isFetchCommand(req []byte) bool {
	return bytes.HasPrefix(req, []byte("0011command=fetch")) || bytes.HasPrefix(req, []byte("0012command=fetch\n"))
}

// newRequestExchange prepares a read exchange whose request goes inline,
// or in chunks when it is larger than a body.
func (h *Helper) newRequestExchange(kind string, request []byte, follows string) (*exchange, error) {
	o := wire.Open{Kind: kind, Follows: follows}
	switch {
	case request == nil:
	case len(payload.Bytes(nil))+len(request) <= inlineMax(h.maxBdy):
		o.Inline = true
	default:
		o.ChunkSize = payload.ChunkSize(h.maxBdy, 0)
	}
	return h.newExchange(o)
}

// ask opens the exchange with its request and waits until its answer is
// on its way.
func (h *Helper) ask(ctx context.Context, x *exchange, request []byte) (*wire.Status, []byte, error) {
	what := "the relay's answer"
	if request == nil || x.open.Inline {
		var inline []byte
		if request != nil {
			inline = payload.Bytes(request)
		}
		st, tail, err := x.openIt(ctx, inline, what)
		if err != nil {
			return nil, nil, err
		}
		return x.outcome(ctx, st, tail, what)
	}
	st, _, err := x.openIt(ctx, nil, "opening the request")
	if err != nil {
		return nil, nil, err
	}
	size := x.open.ChunkSize
	free := make(chan []byte, 1)
	free <- make([]byte, 0, size+seal.Overhead)
	var last *wire.Status
	var tail []byte
	_, err = payload.SplitRamp(bytes.NewReader(request), size, free, func(i uint32, final bool, buf []byte) error {
		defer func() { free <- buf[:0] }()
		s, t, err := x.upChunk(ctx, chunk{i: i, final: final}, x.up.Seal(buf[:0], i, final, buf))
		if final {
			last, tail = s, t
		}
		return err
	}, payload.Cut)
	if err != nil {
		return nil, nil, err
	}
	if last == nil {
		last = st
	}
	return x.outcome(ctx, last, tail, what)
}
