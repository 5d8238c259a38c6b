package shape

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// within runs measure up to four times and passes as soon as one run's
// result falls inside [lo, hi]. A run that is too fast fails at once, as
// pacing can never make a transfer faster; one that is too slow may be the
// machine's fault (two cores shared with other tests), so it is retried.
func within(t *testing.T, what string, lo, hi time.Duration, measure func() time.Duration) {
	t.Helper()
	var got []time.Duration
	for range 4 {
		d := measure()
		got = append(got, d)
		require.GreaterOrEqual(t, d, lo, "%s: faster than the shaping allows", what)
		if d <= hi {
			t.Logf("%s: %v (want %v..%v)", what, d, lo, hi)
			return
		}
	}
	t.Fatalf("%s: every run took longer than %v: %v", what, hi, got)
}

func TestReaderRate(t *testing.T) {
	const size = 4 << 20
	const rate = 16 << 20 // 4 MiB at 16 MiB/s: 250 ms
	want := time.Duration(float64(size) / rate * float64(time.Second))
	within(t, "4 MiB read at 16 MiB/s", want*8/10, want*12/10, func() time.Duration {
		src := bytes.NewReader(make([]byte, size))
		start := time.Now()
		n, err := io.Copy(io.Discard, NewReader(src, rate))
		require.NoError(t, err)
		require.EqualValues(t, size, n)
		return time.Since(start)
	})
}

func TestWriterRate(t *testing.T) {
	const size = 3 << 20
	const rate = 12 << 20 // 3 MiB at 12 MiB/s: 250 ms
	want := time.Duration(float64(size) / rate * float64(time.Second))
	within(t, "3 MiB written at 12 MiB/s", want*8/10, want*12/10, func() time.Duration {
		var dst counter
		start := time.Now()
		n, err := io.Copy(NewWriter(&dst, rate), bytes.NewReader(make([]byte, size)))
		require.NoError(t, err)
		require.EqualValues(t, size, n)
		require.EqualValues(t, size, dst)
		return time.Since(start)
	})
}

// counter is a writer that only counts.
type counter int64

func (c *counter) Write(p []byte) (int, error) {
	*c += counter(len(p))
	return len(p), nil
}

func TestZeroRatePassesThrough(t *testing.T) {
	r := bytes.NewReader(nil)
	require.Same(t, io.Reader(r), NewReader(r, 0))
	var b bytes.Buffer
	require.Same(t, io.Writer(&b), NewWriter(&b, 0))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	require.Same(t, ln, Listener(ln, Link{}, Link{}))
}

// TestPauseBuysNoBurst: after the stream idles, it restarts at the rate
// instead of spending the idle time in one burst.
func TestPauseBuysNoBurst(t *testing.T) {
	const rate = 8 << 20
	r := NewReader(bytes.NewReader(make([]byte, 2<<20)), rate)
	_, err := io.CopyN(io.Discard, r, 512<<10)
	require.NoError(t, err)
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	_, err = io.CopyN(io.Discard, r, 1<<20)
	require.NoError(t, err)
	// 1 MiB at 8 MiB/s is 125 ms; the pause buys at most the pacer's
	// slack (50 ms) of burst, where an unbounded one would be instant.
	require.GreaterOrEqual(t, time.Since(start), 70*time.Millisecond)
}

// serve answers every request on a shaped listener with size bytes.
func serve(t *testing.T, in, out Link, size int) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	body := make([]byte, size)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		w.Header().Set("X-Got", fmt.Sprint(n))
		_, _ = w.Write(body)
	})}
	go func() { _ = srv.Serve(Listener(ln, in, out)) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String()
}

// TestListenerLatency: one request and its answer over a shaped
// connection cost a round trip, and so does the next request on the same
// connection; the time the connection sat idle in between is not latency.
func TestListenerLatency(t *testing.T) {
	const latency = 60 * time.Millisecond
	url := serve(t, Link{Latency: latency}, Link{Latency: latency}, 10)
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	get := func() time.Duration {
		start := time.Now()
		resp, err := client.Get(url)
		require.NoError(t, err)
		_, err = io.Copy(io.Discard, resp.Body)
		require.NoError(t, err)
		resp.Body.Close()
		return time.Since(start)
	}
	first := get()
	require.GreaterOrEqual(t, first, 2*latency, "a request and its answer each wait the latency")
	time.Sleep(3 * latency)
	second := get()
	require.GreaterOrEqual(t, second, 2*latency, "the next turn on the same connection waits again")
	require.Less(t, second, 2*latency+3*latency, "idle time is not counted as latency")
}

// TestListenerRateBothWays: an upload and a download through a shaped
// listener each take their size over their direction's rate.
func TestListenerRateBothWays(t *testing.T) {
	const up, down = 2 << 20, 3 << 20
	const rate = 10 << 20
	url := serve(t, Link{Rate: rate}, Link{Rate: rate}, down)
	want := time.Duration(float64(up+down) / rate * float64(time.Second))
	within(t, "2 MiB up and 3 MiB down at 10 MiB/s each way", want*8/10, want*12/10, func() time.Duration {
		start := time.Now()
		resp, err := http.Post(url, "application/octet-stream", bytes.NewReader(make([]byte, up)))
		require.NoError(t, err)
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		require.EqualValues(t, down, n)
		require.Equal(t, fmt.Sprint(up), resp.Header.Get("X-Got"))
		return time.Since(start)
	})
}

// TestConnKeepsBytes: shaping never changes what crosses.
func TestConnKeepsBytes(t *testing.T) {
	a, b := net.Pipe()
	sa := Conn(a, Link{Rate: 1 << 20, Latency: time.Millisecond}, Link{Rate: 1 << 20, Latency: time.Millisecond})
	msg := strings.Repeat("relay ", 20000)
	go func() {
		_, _ = io.WriteString(sa, msg)
		_ = sa.Close()
	}()
	got, err := io.ReadAll(bufio.NewReader(b))
	require.NoError(t, err)
	require.Equal(t, msg, string(got))
}

// TestListenerConnectionsShareTheRate: two uploads at once over two
// connections of one shaped listener share its rate, as connections over
// one link do: together they take their total size over the rate, not
// half of it.
func TestListenerConnectionsShareTheRate(t *testing.T) {
	const each = 2 << 20
	const rate = 10 << 20
	url := serve(t, Link{Rate: rate}, Link{}, 0)
	client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 2}}
	defer client.CloseIdleConnections()
	start := time.Now()
	var wg sync.WaitGroup
	got := make([]string, 2)
	for i := range got {
		wg.Go(func() {
			resp, err := client.Post(url, "application/octet-stream", bytes.NewReader(make([]byte, each)))
			if err != nil {
				got[i] = err.Error()
				return
			}
			resp.Body.Close()
			got[i] = resp.Header.Get("X-Got")
		})
	}
	wg.Wait()
	took := time.Since(start)
	require.Equal(t, []string{fmt.Sprint(each), fmt.Sprint(each)}, got)
	// A busy machine can only make it slower, so only the lower bound is
	// asserted: per-connection rates would let both finish in half this.
	want := time.Duration(float64(2*each) / rate * float64(time.Second))
	require.GreaterOrEqual(t, took, want*8/10, "two connections moved 4 MiB at 10 MiB/s in %v", took)
}
