package edge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// ListenAndServe runs a Forwarder as a plain process: it listens on addr,
// says where on logw ("edge: listening on http://ADDR …"), logs one line
// per exchange there, and forwards until ctx is done. It then stops taking
// connections, lets the exchanges in flight finish (each is bounded by
// o.Timeout), and returns nil.
func ListenAndServe(ctx context.Context, addr string, o Options, logw io.Writer) error {
	log := slog.New(slog.NewTextHandler(logw, nil))
	next := o.Observe
	o.Observe = func(ex Exchange) {
		logExchange(log, ex)
		if next != nil {
			next(ex)
		}
	}
	f, err := New(o)
	if err != nil {
		return err
	}
	defer f.CloseIdleConnections()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("edge: listen: %w", err)
	}
	fmt.Fprintf(logw, "edge: listening on http://%s (forwarding %s to %s)\n", ln.Addr(), f.o.ClientPrefix, f.route(f.o.ServerPrefix, "").URL)
	srv := &http.Server{
		Handler: f,
		// Slow headers are refused early; bodies and answers are bounded
		// by the forwarder's own time limit.
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("edge: serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down")
	drain, cancel := context.WithTimeout(context.Background(), f.o.Timeout+5*time.Second)
	defer cancel()
	if err := srv.Shutdown(drain); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("edge: shut down: %w", err)
	}
	log.Info("stopped")
	return nil
}

// logExchange writes one line per exchange: route, outcome and sizes,
// never a body or a query (which may name a repository).
func logExchange(log *slog.Logger, ex Exchange) {
	attrs := []any{
		"method", ex.Method, "path", ex.Path, "status", ex.Status,
		"up", ex.Up, "down", ex.Down, "ms", ex.Duration.Milliseconds(),
	}
	if ex.Err == nil {
		log.Info("forwarded", attrs...)
		return
	}
	if ex.Cut {
		attrs = append(attrs, "cut", true)
	}
	log.Warn("not forwarded", append(attrs, "err", ex.Err.Error())...)
}
