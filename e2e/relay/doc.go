// Package relay holds the relay's end-to-end tests: testscript scripts that
// run real git, the real git-remote-relay helper and git-relay-server as a
// process on loopback, with the body-limiting, plaintext-watching edge
// proxy (internal/edgeproxy) in between and either a folder of bare
// repositories or a token-guarded git http-backend (internal/githost) as
// the upstream. The package has no code outside its tests.
package relay
