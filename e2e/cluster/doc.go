// Package cluster holds the relay's cluster end-to-end tests: two or
// three git-relay-server instances as real processes sharing one session
// store on a real S3-compatible server (versitygw), each with its own
// mirror of upstream in its own data folder, behind a real load balancer
// (haproxy) that round-robins every request, with the edge proxy
// (internal/edgeproxy, the 4.5 MB body cap) in front as the seed's
// design has it. Real git and the real git-remote-relay push and clone
// through it all to a token-guarded git http-backend (internal/githost);
// the tests kill instances with SIGKILL at chosen moments and check that
// every push lands exactly once. The package has no code outside its
// tests.
package cluster
