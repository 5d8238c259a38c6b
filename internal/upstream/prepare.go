package upstream

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"sync"

	"github.com/go-git/go-git/v5/plumbing/protocol/packp"

	"github.com/git-relay/git-relay/internal/gitx"
)

// Prepared is a push whose conversation with upstream has begun before
// its request is known: receive-pack started and its advertisement read
// (file://), or the advertisement fetched (HTTP). A relay prepares while
// the client's first chunks come, so that the pack goes upstream the
// moment the policy checks pass. Push sends the request, once; Close
// ends a push that sends none. Both may be called in any order.
type Prepared struct {
	r     *Remote
	ready chan struct{} // closed when the advertisement is in
	adv   *packp.AdvRefs
	err   error

	// file:// upstreams: the running receive-pack.
	cmd     *gitx.Cmd
	stdinW  *os.File
	stdoutR *os.File
	stderr  lateWriter
	// HTTP upstreams: where the request goes.
	base *url.URL

	once sync.Once // the first of Push and Close
}

// Prepare begins a push in the background. ctx bounds the whole push.
func (r *Remote) Prepare(ctx context.Context) *Prepared {
	p := &Prepared{r: r, ready: make(chan struct{})}
	go func() {
		defer close(p.ready)
		if r.base == nil {
			p.err = p.startFile(ctx)
		} else {
			p.adv, p.base, p.err = r.httpAdvertise(ctx, "git-receive-pack")
		}
	}()
	return p
}

// Push sends req and returns what upstream did, as Remote.Push.
func (p *Prepared) Push(ctx context.Context, req PushRequest) (*PushResult, error) {
	used := false
	p.once.Do(func() { used = true })
	if !used {
		return nil, fmt.Errorf("push to %s: the prepared push was used or closed", p.r)
	}
	if err := req.validate(); err != nil {
		p.release()
		return nil, fmt.Errorf("push to %s: %w", p.r, err)
	}
	if req.Progress != nil {
		req.Progress = &syncWriter{w: req.Progress}
	}
	select {
	case <-p.ready:
	case <-ctx.Done():
		p.release()
		return nil, fmt.Errorf("push to %s: %w", p.r, ctx.Err())
	}
	if p.err != nil {
		p.release()
		return nil, p.err
	}
	if p.r.base == nil {
		return p.pushFile(ctx, req)
	}
	return p.r.pushHTTP(ctx, req, p.adv, p.base)
}

// Close ends a prepared push that sent nothing: receive-pack is told
// there is nothing to do and exits. It does nothing after Push.
func (p *Prepared) Close() {
	p.once.Do(p.release)
}

func (p *Prepared) release() {
	<-p.ready
	if p.cmd == nil || p.err != nil {
		return // nothing runs: startFile cleaned up after a failure
	}
	// A flush instead of commands: receive-pack exits quietly.
	_, _ = p.stdinW.Write([]byte("0000"))
	p.stdinW.Close()
	p.stdoutR.Close()
	_ = p.cmd.Wait()
}

// lateWriter passes what receive-pack prints on stderr to the writer
// its request names, once it is known; before that, to nowhere (its
// complaints still reach gitx.Error).
type lateWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lateWriter) set(w io.Writer) {
	l.mu.Lock()
	l.w = w
	l.mu.Unlock()
}

func (l *lateWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.w != nil {
		_, _ = l.w.Write(b)
	}
	return len(b), nil
}
