// Command git-sidecar keeps a remote workspace identical to the local work tree.
package main

import (
	"os"

	"github.com/git-relay/git-relay/sidecar"
)

func main() { os.Exit(sidecar.Main()) }
