// Command git-remote-relay is the git remote helper behind relay:: URLs.
package main

import (
	"os"

	"github.com/git-relay/git-relay/helper"
)

func main() { os.Exit(helper.Main()) }
