package sidecar

import (
	"bufio"
	"bytes"
	"encoding/json"
	"sync"
	"testing"
)

// FuzzShareStream feeds the shared connection's socket protocol arbitrary
// bytes, as a client (or anything else that can reach the socket) could:
// a request line, then frames. Reading must never panic, never hand out a
// frame over the 1 MiB cap, and frames written must read back the same.
func FuzzShareStream(f *testing.F) {
	var seed bytes.Buffer
	var mu sync.Mutex
	seed.WriteString(`{"script":"echo hi"}` + "\n")
	_ = writeFrame(&seed, &mu, frameStdin, []byte("data"))
	_ = writeFrame(&seed, &mu, frameStdinEOF, nil)
	_ = writeFrame(&seed, &mu, frameSignal, []byte("2"))
	f.Add(seed.Bytes())
	f.Add([]byte(`{"quit":true}` + "\n"))
	f.Add([]byte("{\"exec\":true,\"script\":\"x\"}\n\x00\xff\xff\xff\xff"))
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bufio.NewReader(bytes.NewReader(in))
		line, err := r.ReadBytes('\n')
		if err != nil {
			return
		}
		var req shareRequest
		_ = json.Unmarshal(line, &req)
		var end shareEnd
		_ = json.Unmarshal(line, &end)
		for {
			typ, data, err := readFrame(r)
			if err != nil {
				break
			}
			if len(data) > 1<<20 {
				t.Fatalf("a frame of %d bytes got through", len(data))
			}
			var out bytes.Buffer
			var mu sync.Mutex
			if err := writeFrame(&out, &mu, typ, data); err != nil {
				t.Fatal(err)
			}
			typ2, data2, err := readFrame(bufio.NewReader(&out))
			if err != nil || typ2 != typ || !bytes.Equal(data, data2) {
				t.Fatalf("frame %d of %d bytes did not round-trip: %v", typ, len(data), err)
			}
		}
	})
}
