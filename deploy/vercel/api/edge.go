// Package handler is the Vercel function that forwards the relay's routes
// (/api/game/*, and the /healthz probe) to the relay server named by the
// SERVER_URL environment variable. The forwarding is package edge's, the
// very code that `git-relay-server edge` runs and the end-to-end tests put
// in front of the relay; this file only adapts it to the platform.
package handler

import (
	"fmt"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/git-relay/git-relay/edge"
)

// timeout stays under the function's maxDuration in vercel.json (60 s), so
// that an exchange the relay does not finish in time gets the edge's own
// 504 rather than the platform's kill.
const timeout = 55 * time.Second

// pathParam is the parameter the rewrite in vercel.json
// (/api/game/:edgepath*) adds to the query. The forwarder reads the path
// from the request itself when the platform keeps it, and never passes the
// parameter on: the relay's signatures cover the query.
const pathParam = "edgepath"

var (
	once    sync.Once
	forward http.Handler
)

// Handler is the function's entry point.
func Handler(w http.ResponseWriter, r *http.Request) {
	once.Do(func() { forward = newForwarder(os.Getenv("SERVER_URL")) })
	forward.ServeHTTP(w, r)
}

// newForwarder builds the forwarder once per function instance, or a
// handler that says what is wrong with the configuration.
func newForwarder(serverURL string) http.Handler {
	if serverURL == "" {
		return misconfigured("SERVER_URL is not set: set it to the relay server's base URL (https://relay.example.com) in the project's environment variables, then redeploy")
	}
	f, err := edge.New(edge.Options{
		Upstream:  serverURL,
		Timeout:   timeout,
		PathParam: pathParam,
		// The platform's own request headers stay here; some carry
		// credentials (x-vercel-oidc-token) the relay has no use for.
		StripHeaderPrefixes: []string{"X-Vercel-"},
	})
	if err != nil {
		return misconfigured(fmt.Sprintf("SERVER_URL: %v", err))
	}
	return f
}

func misconfigured(msg string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "edge: "+msg, http.StatusInternalServerError)
	})
}
