package edge

import (
	"bytes"
	"io"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

// closedAfter gives its data, then fails as a request body that Go's
// server has closed.
type closedAfter struct{ data []byte }

func (c *closedAfter) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, http.ErrBodyReadAfterClose
	}
	n := copy(p, c.data)
	c.data = c.data[n:]
	return n, nil
}

// TestBodyEndsAtItsDeclaredLength: a body of declared length ends once that
// many bytes have passed, without reading the client's body again. The
// server closes that body when the relay's answer starts, before the
// transport's read for the end may come; that read failing made the
// transport drop the connection the answer was still coming on.
func TestBodyEndsAtItsDeclaredLength(t *testing.T) {
	data := bytes.Repeat([]byte("relay"), 100_000)
	b := &limitedBody{r: io.NopCloser(&closedAfter{data: data}), max: 1 << 20, declared: int64(len(data))}
	got, err := io.ReadAll(b)
	require.NoError(t, err)
	require.Equal(t, data, got)

	// The transport's own way: WriteTo.
	b = &limitedBody{r: io.NopCloser(&closedAfter{data: data}), max: 1 << 20, declared: int64(len(data))}
	var out bytes.Buffer
	n, err := b.WriteTo(&out)
	require.NoError(t, err)
	require.Equal(t, int64(len(data)), n)
	require.Equal(t, data, out.Bytes())

	// A body of unknown length is read to its own end.
	b = &limitedBody{r: io.NopCloser(&closedAfter{data: data}), max: 1 << 20, declared: -1}
	_, err = io.ReadAll(b)
	require.ErrorIs(t, err, http.ErrBodyReadAfterClose)
}
