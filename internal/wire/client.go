package wire

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/git-relay/git-relay/internal/keyring"
)

// Client speaks the relay protocol to one base URL.
type Client struct {
	Base    string // e.g. http://127.0.0.1:8080/api/gr, no trailing slash
	Key     keyring.Key
	HTTP    *http.Client
	MaxBody int64
	// Retries is how often a request that failed in transit (a connection
	// error, 502/503/504, an answer that does not authenticate) is sent
	// again. Every request is safe to repeat.
	Retries int
	// Stall is how long a request may go with no byte moving either way
	// before it is given up (60 s when zero): a proxy that stops answering
	// is noticed then, not when TCP gives up.
	Stall time.Duration
	// Waiting, when set, hears once per request that nothing has moved for
	// a quarter of Stall, with what the request is for.
	Waiting func(what string, waited time.Duration)
}

// Request is one call.
type Request struct {
	Method string
	Path   string
	Query  url.Values
	// Msg is a message to seal as the body (nil for none), and Tail raw
	// bytes sealed after it.
	Msg  any
	Tail []byte
	// Raw is a body sent as it is (a chunk sealed already), instead of Msg.
	Raw []byte
	// What names the request in messages ("upload chunk 3").
	What string
	// After, when set, holds the body back until it is closed, and Sent
	// is called once the whole body has gone to the connection: chunks
	// uploaded side by side then cross a narrow link one after the other,
	// each at the link's full rate, while their answers overlap.
	After <-chan struct{}
	Sent  func()
	// Into, when it has room, receives the answer's body instead of a
	// new buffer: a caller that downloads chunk after chunk reuses a few
	// buffers rather than allocating (and clearing) megabytes for each.
	Into []byte
}

// APIError is an authenticated error answer from the server.
type APIError struct {
	Status int
	Code   string
	Msg    string
}

func (e *APIError) Error() string { return e.Msg }

// Sentinel errors for the transport failures users must tell apart.
var (
	ErrUnreachable  = errors.New("cannot reach the relay")
	ErrKeyRefused   = errors.New("the relay refused our key")
	ErrBadSignature = errors.New("the relay's answer failed authentication")
	ErrStalled      = errors.New("the relay stopped answering")
)

// Call sends req and decodes the sealed answer into out (which may be
// nil); it returns the bytes that followed the answer's message.
func (c *Client) Call(ctx context.Context, req Request, out any) ([]byte, error) {
	var tail []byte
	err := c.do(ctx, req, func(status int, nonce string, body []byte) error {
		var err error
		tail, err = openAnswer(c.Key, nonce, status, body, out)
		return err
	})
	return tail, err
}

// Get sends req and returns the answer's body as it is (a download chunk).
func (c *Client) Get(ctx context.Context, req Request) ([]byte, error) {
	var raw []byte
	err := c.do(ctx, req, func(_ int, _ string, body []byte) error {
		raw = body
		return nil
	})
	return raw, err
}

type transient struct{ error }

func (t transient) Unwrap() error { return t.error }

func (c *Client) maxBody() int64 {
	if c.MaxBody > 0 {
		return c.MaxBody
	}
	return DefaultMaxBody
}

func (c *Client) stall() time.Duration {
	if c.Stall > 0 {
		return c.Stall
	}
	return 60 * time.Second
}

func (c *Client) do(ctx context.Context, req Request, ok func(status int, nonce string, body []byte) error) error {
	what := req.What
	if what == "" {
		what = req.Path
	}
	var lastErr error
	stale := false
	for attempt := 0; attempt <= c.Retries; attempt++ {
		if attempt > 0 {
			wait := time.Duration(attempt*attempt) * 100 * time.Millisecond
			if stale {
				// A request signed before the server started: sign it
				// again now.
				wait = 10 * time.Millisecond
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(wait):
			}
		}
		err := c.once(ctx, req, what, ok)
		if err == nil {
			return nil
		}
		lastErr = err
		var t transient
		if !errors.As(err, &t) {
			break
		}
		stale = errors.Is(err, ErrStale)
		// Nobody listening is not a passing fault: try once more (a server
		// restarting), then say so rather than keep the user waiting.
		if errors.Is(err, syscall.ECONNREFUSED) && attempt >= 1 {
			break
		}
	}
	return lastErr
}

func (c *Client) once(ctx context.Context, req Request, what string, ok func(int, string, []byte) error) error {
	a := Auth{TS: time.Now().UnixMilli(), Nonce: NewNonce()}
	var body []byte
	switch {
	case req.Msg != nil:
		plain, err := frame(req.Msg, req.Tail)
		if err != nil {
			return err
		}
		// The body's associated data is the signed fields, length and
		// key id included, so they are set before it is sealed.
		a.Len = SealedLen(len(plain))
		a.KeyID = c.Key.ID
		if body, err = sealRequest(c.Key, a, req.Method, req.Path, req.Query, plain); err != nil {
			return err
		}
	case req.Raw != nil:
		body = req.Raw
		a.Len = int64(len(body))
	}
	if a.Len > c.maxBody() {
		return fmt.Errorf("%s: a body of %d bytes exceeds relay.maxBody (%d)", what, a.Len, c.maxBody())
	}
	u := c.Base + "/" + req.Path
	if len(req.Query) > 0 {
		u += "?" + req.Query.Encode()
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	dog := c.watch(ctx, cancel, what)
	defer dog.stop()
	hreq, err := http.NewRequestWithContext(ctx, req.Method, u, &progressReader{r: bytes.NewReader(body), dog: dog, ctx: ctx, after: req.After, sent: req.Sent})
	if err != nil {
		return err
	}
	hreq.ContentLength = int64(len(body))
	if len(body) == 0 {
		hreq.Body = http.NoBody
	}
	hreq.Header.Set(HeaderAuth, SignRequest(c.Key, req.Method, req.Path, req.Query, &a))
	if len(body) > 0 {
		hreq.Header.Set("Content-Type", "application/octet-stream")
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(hreq)
	if err != nil {
		return c.transportErr(ctx, err, what)
	}
	defer resp.Body.Close()
	dog.poke()
	// Chunk answers are megabytes: read them into a buffer of their
	// declared size rather than one that grows by doubling.
	buf := bytes.NewBuffer(req.Into[:0])
	if resp.ContentLength > 0 && resp.ContentLength <= c.maxBody() {
		buf.Grow(int(resp.ContentLength) + bytes.MinRead)
	}
	if _, err := buf.ReadFrom(io.LimitReader(&progressReader{r: resp.Body, dog: dog}, c.maxBody()+1)); err != nil {
		return c.transportErr(ctx, fmt.Errorf("read the answer: %w", err), what)
	}
	raw := buf.Bytes()
	if int64(len(raw)) > c.maxBody() {
		return fmt.Errorf("%s: answer larger than relay.maxBody (%d bytes)", what, c.maxBody())
	}
	sig := resp.Header.Get(HeaderSignature)
	if sig == "" || !VerifyResponse(c.Key, a.Nonce, resp.StatusCode, int64(len(raw)), sig) {
		switch {
		case resp.StatusCode == http.StatusUnauthorized:
			var e Error
			if json.Unmarshal(raw, &e) == nil && e.Code == CodeStale {
				return transient{fmt.Errorf("%s: %w", what, ErrStale)}
			}
			return fmt.Errorf("%w (key id %s): the signature did not check out: either relay.keyFile does not hold the server's key, or something on the way altered the request", ErrKeyRefused, c.Key.ID)
		case resp.StatusCode == http.StatusRequestEntityTooLarge:
			return fmt.Errorf("%s: a proxy refused a %d-byte body as too large: lower relay.maxBody", what, len(body))
		case resp.StatusCode >= 500 || resp.StatusCode == http.StatusNotFound && sig == "":
			return transient{fmt.Errorf("%w at %s: %s for %s", ErrUnreachable, c.Base, resp.Status, what)}
		}
		return transient{fmt.Errorf("%s: %w (HTTP %d; a proxy may have altered it)", what, ErrBadSignature, resp.StatusCode)}
	}
	if resp.StatusCode/100 != 2 {
		var e Error
		if _, err := openAnswer(c.Key, a.Nonce, resp.StatusCode, raw, &e); err != nil {
			return transient{fmt.Errorf("%s: %w (a proxy may have altered it)", what, ErrBadSignature)}
		}
		if e.Message == "" {
			e.Message = fmt.Sprintf("%s: HTTP %d", what, resp.StatusCode)
		}
		return &APIError{Status: resp.StatusCode, Code: e.Code, Msg: e.Message}
	}
	if err := ok(resp.StatusCode, a.Nonce, raw); err != nil {
		if errors.Is(err, ErrSealed) {
			return transient{fmt.Errorf("%s: %w (a proxy may have altered it)", what, ErrBadSignature)}
		}
		return err
	}
	return nil
}

func (c *Client) transportErr(ctx context.Context, err error, what string) error {
	if cause := context.Cause(ctx); errors.Is(cause, ErrStalled) {
		return cause
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var cert *tls.CertificateVerificationError
	if errors.As(err, &cert) {
		// Not a passing fault: asking again changes nothing.
		return fmt.Errorf("the relay at %s shows a certificate this machine does not trust (%v): if it is right, set http.sslCAInfo (or GIT_SSL_CAINFO) to its CA's certificate", c.Base, cert.Err)
	}
	return transient{fmt.Errorf("%w at %s (%s): %w", ErrUnreachable, c.Base, what, unwrapURLError(err))}
}

func unwrapURLError(err error) error {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		return uerr.Err
	}
	return err
}

// watchdog gives up on a request when nothing has moved for the stall
// time, and says once, at a quarter of it, what is being waited for.
type watchdog struct {
	last atomic.Int64 // unix nanoseconds of the last progress
	done chan struct{}
}

func (c *Client) watch(ctx context.Context, cancel context.CancelCauseFunc, what string) *watchdog {
	d := &watchdog{done: make(chan struct{})}
	d.poke()
	stall := c.stall()
	tick := min(stall/8, time.Second)
	go func() {
		t := time.NewTicker(tick)
		defer t.Stop()
		warned := false
		for {
			select {
			case <-d.done:
				return
			case <-ctx.Done():
				return
			case now := <-t.C:
				idle := now.Sub(time.Unix(0, d.last.Load()))
				if idle >= stall {
					cancel(fmt.Errorf("%w: nothing came back for %s while waiting for %s (the proxy or the relay server hangs; check them, then run the command again)", ErrStalled, stall.Round(time.Second), what))
					return
				}
				if !warned && idle >= stall/4 && c.Waiting != nil {
					warned = true
					c.Waiting(what, idle)
				}
			}
		}
	}()
	return d
}

func (d *watchdog) poke() { d.last.Store(time.Now().UnixNano()) }
func (d *watchdog) stop() { close(d.done) }

// progressReader pokes the watchdog whenever bytes move.
type progressReader struct {
	r     io.Reader
	dog   *watchdog
	ctx   context.Context
	after <-chan struct{} // the body waits for it (Request.After)
	sent  func()          // called at the body's end (Request.Sent)
}

func (p *progressReader) Read(b []byte) (int, error) {
	if p.after != nil {
		select {
		case <-p.after:
			p.after = nil
			p.dog.poke()
		case <-p.ctx.Done():
			return 0, context.Cause(p.ctx)
		}
	}
	n, err := p.r.Read(b)
	if n > 0 {
		p.dog.poke()
	}
	if err == io.EOF && p.sent != nil {
		p.sent()
		p.sent = nil
	}
	return n, err
}

// NewHTTPClient returns the HTTP client for a relay: the system's roots
// plus, when caFile is set (http.sslCAInfo, GIT_SSL_CAINFO), the
// certificates in it; timeouts on the steps that should be quick, and
// none on a whole request, which the stall watchdog bounds instead.
func NewHTTPClient(caFile string) (*http.Client, error) {
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second, Control: limitUnsent}).DialContext,
		ForceAttemptHTTP2:     true,
		TLSHandshakeTimeout:   30 * time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   8,
		ExpectContinueTimeout: time.Second,
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("read CA file %s: %w", caFile, err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate", caFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{
		Transport: tr,
		// The server never redirects; a proxy that does is not followed.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}, nil
}
