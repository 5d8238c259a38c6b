// Command git-relay-server is the relay: the only machine that reaches the external git host.
package main

import (
	"os"

	"github.com/git-relay/git-relay/server"
)

func main() { os.Exit(server.Main()) }
