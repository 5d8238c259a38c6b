package upstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"

	"github.com/go-git/go-git/v5/plumbing/protocol/packp"

	"github.com/git-relay/git-relay/internal/gitx"
)

// git is the door for file:// upstreams. GIT_PROTOCOL is emptied so that
// an inherited value cannot switch upload-pack and receive-pack to a
// protocol version this package does not speak.
func (r *Remote) git() gitx.Repo {
	return gitx.Repo{Env: append(r.GitEnv(), "GIT_PROTOCOL=")}
}

func (r *Remote) fileAdvertise(ctx context.Context) (*packp.AdvRefs, error) {
	dir, err := r.gitDir()
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	c := r.git().Command(ctx, "upload-pack", "--strict", "--advertise-refs", dir)
	c.Stdout = &out
	if err := c.Run(); err != nil {
		return nil, fmt.Errorf("list refs of %s: %w", r, err)
	}
	adv, err := decodeAdvertisement(&out, "")
	if err != nil {
		return nil, fmt.Errorf("list refs of %s: %w", r, err)
	}
	return adv, nil
}

// startFile runs receive-pack on the repository and reads its
// advertisement. It talks to it over a pipe and a socket (gitx.InputPipe):
// the child reads the pack straight from our write end, so the pack is
// copied from req.Pack into the kernel and nowhere else.
func (p *Prepared) startFile(ctx context.Context) error {
	r := p.r
	dir, err := r.gitDir()
	if err != nil {
		return err
	}
	stdinR, stdinW, err := gitx.InputPipe()
	if err != nil {
		return fmt.Errorf("push to %s: %w", r, err)
	}
	stdoutR, stdoutW, err := os.Pipe()
	if err != nil {
		stdinR.Close()
		stdinW.Close()
		return fmt.Errorf("push to %s: %w", r, err)
	}
	// The relay streams the client's pack without indexing it itself, so
	// the objects must be checked where they land: GitHub fsck-checks every
	// push, and a file:// upstream is asked to do the same.
	cmd := gitx.Repo{Env: append(r.GitEnv("receive.fsckObjects=true"), "GIT_PROTOCOL=")}.Command(ctx, "receive-pack", dir)
	cmd.Stdin = stdinR
	cmd.Stdout = stdoutW
	// Without side bands receive-pack prints its messages on stderr.
	cmd.Stderr = &p.stderr
	err = cmd.Start()
	// The child has its own copies of these ends now; ours must go, or we
	// would never see EOF on stdout.
	stdinR.Close()
	stdoutW.Close()
	if err != nil {
		stdinW.Close()
		stdoutR.Close()
		return fmt.Errorf("push to %s: %w", r, err)
	}
	p.cmd, p.stdinW, p.stdoutR = cmd, stdinW, stdoutR
	if p.adv, err = decodeAdvertisement(stdoutR, ""); err != nil {
		return p.abort(err)
	}
	return nil
}

// abort ends the conversation early and returns the child's own
// complaint when it has one, which says more than ours.
func (p *Prepared) abort(err error) error {
	p.stdinW.Close()
	p.stdoutR.Close()
	if werr := p.cmd.Wait(); werr != nil {
		var gerr *gitx.Error
		if errors.As(werr, &gerr) && gerr.Stderr != "" {
			err = werr
		}
	}
	return fmt.Errorf("push to %s: %w", p.r, err)
}

// pushFile sends req to the receive-pack startFile began.
func (p *Prepared) pushFile(ctx context.Context, req PushRequest) (*PushResult, error) {
	r, stdinW, stdoutR := p.r, p.stdinW, p.stdoutR
	defer stdoutR.Close()
	p.stderr.set(req.Progress)
	caps, sb, err := negotiate(p.adv, req)
	if err != nil {
		// A flush instead of commands tells receive-pack there is
		// nothing to do, and it exits quietly.
		_, _ = stdinW.Write([]byte("0000"))
		return nil, p.abort(err)
	}

	written := make(chan error, 1)
	go func() {
		err := writeRequest(stdinW, caps, req)
		stdinW.Close()
		written <- err
	}()
	res, rerr := r.readResult(stdoutR, sb, req)
	if rerr == nil && !sb {
		_, _ = io.Copy(io.Discard, stdoutR)
	}
	// Closing our read end lets a child that still writes die of EPIPE
	// rather than block, and a child that died lets the writer stop.
	stdoutR.Close()
	werr := p.cmd.Wait()
	wrErr := <-written

	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("push to %s: %w", r, err)
	}
	if rerr == nil {
		// receive-pack reports only after reading everything it wanted,
		// so a failed write here means the pack itself could not be
		// read; the report then shows the damage, but the cause matters.
		if wrErr != nil && !isBrokenPipe(wrErr) {
			return nil, fmt.Errorf("push to %s: %w", r, wrErr)
		}
		return res, nil
	}
	switch {
	case werr != nil:
		return nil, fmt.Errorf("push to %s: %w", r, werr)
	case wrErr != nil && !isBrokenPipe(wrErr):
		return nil, fmt.Errorf("push to %s: %w", r, wrErr)
	}
	return nil, fmt.Errorf("push to %s: %w", r, rerr)
}

// errPushEnded stops a request writer that the other side stopped reading.
var errPushEnded = errors.New("push ended")

// isBrokenPipe tells a write that failed because upstream stopped reading
// (whose reason the report or the exit status gives) from one that failed
// on our side.
func isBrokenPipe(err error) bool {
	return errors.Is(err, syscall.EPIPE) || errors.Is(err, os.ErrClosed) ||
		errors.Is(err, io.ErrClosedPipe) || errors.Is(err, errPushEnded)
}

// syncWriter serializes writes to the caller's progress writer, which
// hears both receive-pack's stderr and the side band.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
