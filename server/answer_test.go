package server

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func pkt(line string) string { return fmt.Sprintf("%04x%s", len(line)+4, line) }

// TestRequestWants reads the wanted ids of a protocol v2 fetch request,
// and nothing else: not its haves, nor a line that only looks like a want.
func TestRequestWants(t *testing.T) {
	a, b, h := strings.Repeat("a", 40), strings.Repeat("b", 40), strings.Repeat("c", 40)
	req := pkt("command=fetch\n") + pkt("agent=git/2.39.5\n") + "0001" +
		pkt("thin-pack\n") + pkt("want "+a+"\n") + pkt("want "+b+"\n") + pkt("want-ref refs/heads/x\n") +
		pkt("want nothex\n") + pkt("have "+h+"\n") + pkt("done\n") + "0000"
	require.Equal(t, []string{a, b}, requestWants([]byte(req)))
	require.Empty(t, requestWants([]byte(pkt("command=ls-refs\n")+"0001"+pkt("peel\n")+"0000")))
	// A cut request yields what came before the cut.
	require.Equal(t, []string{a}, requestWants([]byte(req[:strings.Index(req, "want "+b)+10])))
}
