// Package deploy holds what operators deploy rather than build: the
// systemd unit and settings file for git-relay-server (systemd/, placed by
// install.sh --server) and the Vercel function that runs the edge
// forwarder (vercel/, a module of its own). Its tests install the server
// into a staging folder and check the unit with systemd-analyze.
package deploy
