package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"

	"github.com/go-git/go-git/v5/plumbing/protocol/packp"

	"github.com/git-relay/git-relay/internal/gitx"
)

// maxAdvertisement bounds a ref advertisement we are willing to read.
const maxAdvertisement = 256 << 20

func (r *Remote) newRequest(ctx context.Context, method, u string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", userAgent)
	req.Header.Set("Pragma", "no-cache")
	if r.token != "" {
		req.Header.Set("Authorization", r.basicAuth())
	}
	return req, nil
}

// httpAdvertise fetches info/refs for service and returns the
// advertisement and the repository URL to use for the service request:
// like git, we follow redirects of this first request (to the same host
// only) and send the rest where they led.
func (r *Remote) httpAdvertise(ctx context.Context, service string) (*packp.AdvRefs, *url.URL, error) {
	ctx, cancel := context.WithTimeout(ctx, advertiseTimeout)
	defer cancel()
	u := r.base.String() + "/info/refs?service=" + service
	req, err := r.newRequest(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("contact upstream %s: %w", r, err)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("contact upstream %s: %w", r, err)
	}
	defer resp.Body.Close()
	if err := r.checkResponse(resp, "application/x-"+service+"-advertisement"); err != nil {
		return nil, nil, err
	}
	adv, err := decodeAdvertisement(io.LimitReader(resp.Body, maxAdvertisement), service)
	if err != nil {
		return nil, nil, fmt.Errorf("list refs of %s: %w", r, err)
	}
	base := r.base
	if final := resp.Request.URL; strings.HasSuffix(final.Path, "/info/refs") {
		b := *final
		b.Path = strings.TrimSuffix(final.Path, "/info/refs")
		b.RawPath = ""
		b.RawQuery = ""
		base = &b
	}
	return adv, base, nil
}

// checkResponse maps HTTP failures to ErrAuth and ErrNotFound, and makes
// sure the answer comes from a smart git server.
func (r *Remote) checkResponse(resp *http.Response, contentType string) error {
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return fmt.Errorf("%w: %s answered %s; check the upstream token", ErrAuth, r, resp.Status)
	case resp.StatusCode == http.StatusNotFound:
		return fmt.Errorf("%w: %s answered %s (a token without access to the repository gets this too)", ErrNotFound, r, resp.Status)
	case resp.StatusCode != http.StatusOK:
		snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		msg := r.Redact(gitx.Sanitize(string(snippet)))
		if msg != "" {
			msg = ": " + msg
		}
		return fmt.Errorf("upstream %s answered %s%s", r, resp.Status, msg)
	}
	ct, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if ct != contentType {
		return fmt.Errorf("upstream %s is not a smart git HTTP server (it answered with Content-Type %q, want %q)", r, ct, contentType)
	}
	return nil
}

// pushHTTP posts the request as a chunked body written by a goroutine
// through a pipe, so the pack streams from req.Pack to the socket.
// adv and base are what httpAdvertise returned for git-receive-pack.
func (r *Remote) pushHTTP(ctx context.Context, req PushRequest, adv *packp.AdvRefs, base *url.URL) (*PushResult, error) {
	caps, sb, err := negotiate(adv, req)
	if err != nil {
		return nil, fmt.Errorf("push to %s: %w", r, err)
	}

	pr, pw := io.Pipe()
	written := make(chan error, 1)
	go func() {
		err := writeRequest(pw, caps, req)
		pw.CloseWithError(err)
		written <- err
	}()
	// Whatever happens, the writer must not stay blocked on the pipe.
	finish := func() error {
		pr.CloseWithError(errPushEnded)
		return <-written
	}

	hreq, err := r.newRequest(ctx, http.MethodPost, base.String()+"/git-receive-pack", pr)
	if err != nil {
		finish()
		return nil, fmt.Errorf("push to %s: %w", r, err)
	}
	hreq.Header.Set("Content-Type", "application/x-git-receive-pack-request")
	hreq.Header.Set("Accept", "application/x-git-receive-pack-result")
	resp, err := r.client.Do(hreq)
	if err != nil {
		if werr := finish(); werr != nil && !isBrokenPipe(werr) && !errors.Is(err, context.Canceled) {
			// Reading the pack failed, and that aborted the request.
			return nil, fmt.Errorf("push to %s: %w", r, werr)
		}
		return nil, fmt.Errorf("push to %s: %w", r, err)
	}
	defer resp.Body.Close()
	if err := r.checkResponse(resp, "application/x-git-receive-pack-result"); err != nil {
		finish()
		return nil, err
	}
	res, rerr := r.readResult(resp.Body, sb, req)
	werr := finish()
	if rerr != nil {
		return nil, fmt.Errorf("push to %s: %w", r, rerr)
	}
	if werr != nil && !isBrokenPipe(werr) {
		return nil, fmt.Errorf("push to %s: %w", r, werr)
	}
	return res, nil
}
