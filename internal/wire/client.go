package wire

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
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
	// Retries is how often a request that failed in transit (connection
	// error, 502/503/504, unsigned or mangled answer) is sent again. Every
	// call the client makes is safe to repeat.
	Retries int
}

// APIError is a signed error answer from the server.
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
)

// Do sends one signed request and checks the signed answer. in is
// marshalled as JSON unless it is a []byte; out, when not nil, receives the
// JSON answer. It returns the raw answer body.
func (c *Client) Do(ctx context.Context, method, path string, query url.Values, in any, out any) ([]byte, error) {
	var body []byte
	switch v := in.(type) {
	case nil:
	case []byte:
		body = v
	default:
		var err error
		if body, err = json.Marshal(v); err != nil {
			return nil, err
		}
	}
	if int64(len(body)) > c.maxBody() {
		return nil, fmt.Errorf("%s: request body of %d bytes exceeds relay.maxBody (%d)", path, len(body), c.maxBody())
	}
	var lastErr error
	for attempt := 0; attempt <= c.Retries; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Duration(attempt*attempt) * 100 * time.Millisecond):
			}
		}
		raw, err := c.once(ctx, method, path, query, body, out)
		if err == nil {
			return raw, nil
		}
		lastErr = err
		if !retryable(err) {
			break
		}
		// Nobody listening is not a passing fault: try once more (a server
		// restarting), then say so rather than keep the user waiting.
		if errors.Is(err, syscall.ECONNREFUSED) && attempt >= 1 {
			break
		}
	}
	return nil, lastErr
}

type transient struct{ error }

func (t transient) Unwrap() error { return t.error }

func retryable(err error) bool {
	var t transient
	return errors.As(err, &t)
}

func (c *Client) maxBody() int64 {
	if c.MaxBody > 0 {
		return c.MaxBody
	}
	return DefaultMaxBody
}

func (c *Client) once(ctx context.Context, method, path string, query url.Values, body []byte, out any) ([]byte, error) {
	u := c.Base + "/" + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	nonce := NewNonce()
	req.Header.Set(HeaderAuth, SignRequest(c.Key, method, path, query, body, time.Now().Unix(), nonce))
	if body != nil {
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, transient{fmt.Errorf("%w at %s: %w", ErrUnreachable, c.Base, unwrapURLError(err))}
	}
	defer resp.Body.Close()
	// Chunk answers are megabytes: read them into a buffer of their
	// declared size rather than one that grows by doubling.
	var buf bytes.Buffer
	if resp.ContentLength > 0 && resp.ContentLength <= c.maxBody() {
		buf.Grow(int(resp.ContentLength) + bytes.MinRead)
	}
	_, err = buf.ReadFrom(io.LimitReader(resp.Body, c.maxBody()+1))
	raw := buf.Bytes()
	if err != nil {
		return nil, transient{fmt.Errorf("%s: read answer: %w", path, err)}
	}
	if int64(len(raw)) > c.maxBody() {
		return nil, fmt.Errorf("%s: answer larger than relay.maxBody (%d bytes)", path, c.maxBody())
	}
	sig := resp.Header.Get(HeaderSignature)
	if sig == "" || !VerifyResponse(c.Key, nonce, resp.StatusCode, raw, sig) {
		switch {
		case resp.StatusCode == http.StatusUnauthorized:
			return nil, fmt.Errorf("%w (key id %s): the signature did not check out: either relay.keyFile does not hold the server's key, or something on the way altered the request", ErrKeyRefused, c.Key.ID)
		case resp.StatusCode == http.StatusRequestEntityTooLarge:
			return nil, fmt.Errorf("%s: a proxy refused a %d-byte body as too large: lower relay.maxBody", path, len(body))
		case resp.StatusCode >= 500 || resp.StatusCode == http.StatusNotFound && sig == "":
			return nil, transient{fmt.Errorf("%w at %s: %s from %s", ErrUnreachable, c.Base, resp.Status, path)}
		}
		return nil, transient{fmt.Errorf("%s: %w (HTTP %d; a proxy may have altered it)", path, ErrBadSignature, resp.StatusCode)}
	}
	if resp.StatusCode/100 != 2 {
		var e Error
		if err := json.Unmarshal(raw, &e); err != nil || e.Message == "" {
			return nil, &APIError{Status: resp.StatusCode, Code: CodeInternal, Msg: fmt.Sprintf("%s: HTTP %d", path, resp.StatusCode)}
		}
		return nil, &APIError{Status: resp.StatusCode, Code: e.Code, Msg: e.Message}
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return nil, fmt.Errorf("%s: decode answer: %w", path, err)
		}
	}
	return raw, nil
}

func unwrapURLError(err error) error {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		return uerr.Err
	}
	return err
}
