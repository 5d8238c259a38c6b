package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/git-relay/git-relay/internal/edgeproxy"
	"github.com/git-relay/git-relay/internal/wire"
)

// The flood: anyone who can reach the server may send it requests without
// the key. Each declares and sends a body as large as a body may be.
const (
	floodConns = 200
	floodBody  = 4_500_000
)

// floodResult is the server's memory under the flood.
type floodResult struct {
	rssBeforeKiB int64       // the server's RSS when the flood started
	peakKiB      int64       // its VmHWM during the flood
	codes        map[int]int // how the requests were answered (-1: no answer)
	took         time.Duration
}

// floodCase opens floodConns connections straight to the main server at
// once, each sending a request with a bogus signature that declares and
// sends a floodBody-byte body, and reads the server's peak RSS. The server
// should answer 401 from the headers alone, without reading or buffering
// any body.
func (b *bench) floodCase(ctx context.Context) error {
	s := b.srv
	s.idle(ctx)
	before, err := procStatus(s.pid(), "VmRSS")
	if err != nil {
		return err
	}
	if err := resetHWM(s.pid()); err != nil {
		return fmt.Errorf("reset the server's peak RSS: %w", err)
	}
	fmt.Printf("flood: %d unauthenticated %d-byte bodies at once...\n", floodConns, floodBody)
	body := make([]byte, floodBody)
	res := &floodResult{rssBeforeKiB: before, codes: map[int]int{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for range floodConns {
		wg.Go(func() {
			code := floodOne(ctx, s.listen, body)
			mu.Lock()
			res.codes[code]++
			mu.Unlock()
		})
	}
	wg.Wait()
	res.took = time.Since(start)
	if res.peakKiB, err = vmHWM(s.pid()); err != nil {
		return err
	}
	b.flood = res
	return nil
}

// floodOne sends one request and returns the status it got, or -1.
func floodOne(ctx context.Context, addr string, body []byte) int {
	d := net.Dialer{Timeout: 10 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return -1
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Minute))
	fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: relay\r\nAuthorization: GR3-HMAC-SHA256 kid=01020304,ts=%d,nonce=%s,len=%d,sig=00\r\nContent-Length: %d\r\n\r\n",
		edgeproxy.ServerPrefix+wire.PathOpen, time.Now().UnixMilli(), wire.NewNonce(), len(body), len(body))
	// The body goes while the answer is read: the server answers from the
	// headers, and may close before taking it all.
	go func() { _, _ = c.Write(body) }()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return -1
	}
	resp.Body.Close()
	return resp.StatusCode
}

// procStatus reads one field of /proc/<pid>/status, in KiB.
func procStatus(pid int, field string) (int64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			return strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s line in /proc/%d/status", field, pid)
}
