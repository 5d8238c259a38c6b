// Package storetest is the conformance suite that every store.Store
// implementation runs, so that the relay server can count on the same
// behaviour from the local folder and from S3: what Put, Get, Stat,
// Delete and List return, key order, create-once and compare-and-swap
// under concurrency, ETags that change on every write, whole objects for
// concurrent readers, key validation and cancellation.
//
// An implementation's test calls Run with a factory that returns a new,
// empty store for each subtest, as restic's backend tests do.
package storetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/store"
)

// Factory returns a new, empty store; the store lives until tb ends.
type Factory func(tb testing.TB) store.Store

// Options relax the suite for a store whose server is known to fall
// short of the contract in a way the relay can live with. Each field says
// why it is safe.
type Options struct {
	// StaleETagUnderRace: while a Put replaces an object, Get may return
	// the new bytes with the ETag of the version they replaced (never of
	// a later one). A compare-and-swap with that ETag fails, because the
	// version it names is gone and ETags never repeat, so a
	// read-modify-write loop reads again: slower, never wrong.
	// versitygw's posix backend does this (it reads the ETag before it
	// opens the file).
	StaleETagUnderRace bool
}

// Run runs every conformance test as a subtest of t.
func Run(t *testing.T, newStore Factory) {
	RunWith(t, newStore, Options{})
}

// RunWith runs the suite with relaxations (see Options).
func RunWith(t *testing.T, newStore Factory, opt Options) {
	tests := []struct {
		name string
		fn   func(*testing.T, store.Store)
	}{
		{"PutGetStat", testPutGetStat},
		{"Overwrite", testOverwrite},
		{"EmptyObject", testEmptyObject},
		{"Volatile", testVolatile},
		{"GetReusesBuffer", testGetReusesBuffer},
		{"NotFound", testNotFound},
		{"Delete", testDelete},
		{"IfNoneMatch", testIfNoneMatch},
		{"IfNoneMatchRace", testIfNoneMatchRace},
		{"IfMatch", testIfMatch},
		{"IfMatchCounter", testIfMatchCounter},
		{"ETagChangesOnSameBytes", testETagSameBytes},
		{"AtomicReplace", func(t *testing.T, s store.Store) { testAtomicReplace(t, s, opt) }},
		{"NestedKeys", testNestedKeys},
		{"ListPrefix", testListPrefix},
		{"ListOrder", testListOrder},
		{"ListStops", testListStops},
		{"LargeObject", testLargeObject},
		{"InvalidKeys", testInvalidKeys},
		{"Canceled", testCanceled},
		{"ConcurrentKeys", testConcurrentKeys},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore(t)) })
	}
}

func put(t testing.TB, s store.Store, key string, data []byte) store.ETag {
	t.Helper()
	etag, err := s.Put(t.Context(), key, data, store.PutOptions{})
	require.NoError(t, err, "put %q", key)
	require.NotEmpty(t, etag, "put %q returned no ETag", key)
	return etag
}

func get(t testing.TB, s store.Store, key string) ([]byte, store.ETag) {
	t.Helper()
	data, etag, err := s.Get(t.Context(), key, nil)
	require.NoError(t, err, "get %q", key)
	return data, etag
}

// keys lists the keys under prefix, in the order List gives them.
func keys(t testing.TB, s store.Store, prefix string) []string {
	t.Helper()
	got := []string{}
	require.NoError(t, s.List(t.Context(), prefix, func(i store.Info) error {
		got = append(got, i.Key)
		return nil
	}))
	return got
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

func testPutGetStat(t *testing.T, s store.Store) {
	start := time.Now()
	data := []byte("the state of push 1f2e")
	etag := put(t, s, "push/1f2e/state", data)

	got, getTag := get(t, s, "push/1f2e/state")
	require.Equal(t, data, got)
	require.Equal(t, etag, getTag, "Get's ETag is Put's")

	info, err := s.Stat(t.Context(), "push/1f2e/state")
	require.NoError(t, err)
	require.Equal(t, "push/1f2e/state", info.Key)
	require.Equal(t, int64(len(data)), info.Size)
	require.Equal(t, etag, info.ETag, "Stat's ETag is Put's")
	// Modified comes from the store's clock (a server's, for S3), which
	// may round to the second: allow a margin, not an exact instant.
	require.WithinRange(t, info.Modified, start.Add(-time.Minute), time.Now().Add(time.Minute))

	var listed []store.Info
	require.NoError(t, s.List(t.Context(), "", func(i store.Info) error {
		listed = append(listed, i)
		return nil
	}))
	require.Len(t, listed, 1)
	require.Equal(t, info.Key, listed[0].Key)
	require.Equal(t, info.Size, listed[0].Size)
	require.Equal(t, info.ETag, listed[0].ETag, "List's ETag is Stat's")
}

func testOverwrite(t *testing.T, s store.Store) {
	e1 := put(t, s, "k", []byte("first version, longer"))
	e2 := put(t, s, "k", []byte("second"))
	require.NotEqual(t, e1, e2)
	got, etag := get(t, s, "k")
	require.Equal(t, "second", string(got))
	require.Equal(t, e2, etag)
	info, err := s.Stat(t.Context(), "k")
	require.NoError(t, err)
	require.Equal(t, int64(len("second")), info.Size)
	require.Equal(t, []string{"k"}, keys(t, s, ""))
}

func testEmptyObject(t *testing.T, s store.Store) {
	etag := put(t, s, "empty", nil)
	got, getTag, err := s.Get(t.Context(), "empty", []byte("old bytes"))
	require.NoError(t, err)
	require.Empty(t, got)
	require.Equal(t, etag, getTag)
	info, err := s.Stat(t.Context(), "empty")
	require.NoError(t, err)
	require.Zero(t, info.Size)
	require.Equal(t, []string{"empty"}, keys(t, s, ""))
}

// testVolatile: a volatile write is an ordinary one until a crash: seen
// whole, listed, replaced by a later write, and conditional as asked.
func testVolatile(t *testing.T, s store.Store) {
	data := randomBytes(1 << 20)
	etag, err := s.Put(t.Context(), "dn/x/1", data, store.PutOptions{Volatile: true, IfNoneMatch: true})
	require.NoError(t, err)
	got, getTag := get(t, s, "dn/x/1")
	require.Equal(t, data, got)
	require.Equal(t, etag, getTag)
	_, err = s.Put(t.Context(), "dn/x/1", []byte("again"), store.PutOptions{Volatile: true, IfNoneMatch: true})
	require.ErrorIs(t, err, store.ErrPrecondition)
	_, err = s.Put(t.Context(), "dn/x/1", []byte("again"), store.PutOptions{Volatile: true})
	require.NoError(t, err)
	got, _ = get(t, s, "dn/x/1")
	require.Equal(t, []byte("again"), got)
	require.Equal(t, []string{"dn/x/1"}, keys(t, s, "dn/"))
}

func testGetReusesBuffer(t *testing.T, s store.Store) {
	data := randomBytes(100 << 10)
	put(t, s, "chunk", data)

	// A buffer with room is reused: the object lands at its start,
	// whatever it held before.
	buf := bytes.Repeat([]byte{0xAA}, 200<<10)
	got, _, err := s.Get(t.Context(), "chunk", buf)
	require.NoError(t, err)
	require.Equal(t, data, got)
	require.Same(t, &buf[0], &got[0], "Get did not reuse a buffer with room")

	// So is one of exactly the object's size, as a reader of same-sized
	// chunks has after the first.
	exact := make([]byte, 0, len(data))
	got, _, err = s.Get(t.Context(), "chunk", exact)
	require.NoError(t, err)
	require.Equal(t, data, got)
	require.Same(t, &exact[:1][0], &got[0], "Get did not reuse a buffer of the object's size")

	// A small buffer grows; its old content does not leak into the result.
	small := []byte("stale")
	got, _, err = s.Get(t.Context(), "chunk", small)
	require.NoError(t, err)
	require.Equal(t, data, got)

	// The buffer is reused again for a smaller object.
	put(t, s, "tiny", []byte("tiny"))
	got2, _, err := s.Get(t.Context(), "tiny", got)
	require.NoError(t, err)
	require.Equal(t, "tiny", string(got2))
	require.Same(t, &got[0], &got2[0])
}

func testNotFound(t *testing.T, s store.Store) {
	_, _, err := s.Get(t.Context(), "no/such/key", nil)
	require.ErrorIs(t, err, store.ErrNotFound)
	_, err = s.Stat(t.Context(), "no/such/key")
	require.ErrorIs(t, err, store.ErrNotFound)
	require.NoError(t, s.Delete(t.Context(), "no/such/key"), "deleting a missing object is not an error")
	require.Empty(t, keys(t, s, ""))
	require.Empty(t, keys(t, s, "no/"))

	// A key that is a prefix of an object's key is not an object.
	put(t, s, "dir/obj", []byte("x"))
	_, _, err = s.Get(t.Context(), "dir", nil)
	require.ErrorIs(t, err, store.ErrNotFound)
	_, err = s.Stat(t.Context(), "dir/ob")
	require.ErrorIs(t, err, store.ErrNotFound)
	// Nor is a key that goes through an object.
	_, _, err = s.Get(t.Context(), "dir/obj/below", nil)
	require.ErrorIs(t, err, store.ErrNotFound)
}

func testDelete(t *testing.T, s store.Store) {
	put(t, s, "s/1/a", []byte("a"))
	put(t, s, "s/1/b", []byte("b"))
	put(t, s, "s/2/a", []byte("c"))
	require.NoError(t, s.Delete(t.Context(), "s/1/a"))
	_, _, err := s.Get(t.Context(), "s/1/a", nil)
	require.ErrorIs(t, err, store.ErrNotFound)
	require.Equal(t, []string{"s/1/b", "s/2/a"}, keys(t, s, ""))
	require.NoError(t, s.Delete(t.Context(), "s/1/a"), "second delete")

	require.NoError(t, store.DeletePrefix(t.Context(), s, "s/1/"))
	require.Equal(t, []string{"s/2/a"}, keys(t, s, ""))
	require.Empty(t, keys(t, s, "s/1/"))

	// A deleted key can be written again.
	put(t, s, "s/1/a", []byte("again"))
	got, _ := get(t, s, "s/1/a")
	require.Equal(t, "again", string(got))
}

func testIfNoneMatch(t *testing.T, s store.Store) {
	ctx := t.Context()
	create := store.PutOptions{IfNoneMatch: true}
	etag, err := s.Put(ctx, "session/manifest", []byte("first"), create)
	require.NoError(t, err)
	require.NotEmpty(t, etag)

	_, err = s.Put(ctx, "session/manifest", []byte("second"), create)
	require.ErrorIs(t, err, store.ErrPrecondition)
	got, getTag := get(t, s, "session/manifest")
	require.Equal(t, "first", string(got), "a lost create changed the object")
	require.Equal(t, etag, getTag)

	require.NoError(t, s.Delete(ctx, "session/manifest"))
	_, err = s.Put(ctx, "session/manifest", []byte("third"), create)
	require.NoError(t, err, "create after delete")
	got, _ = get(t, s, "session/manifest")
	require.Equal(t, "third", string(got))
}

// testIfNoneMatchRace: of N writers racing to create one key, exactly one
// wins, and the object is the winner's.
func testIfNoneMatchRace(t *testing.T, s store.Store) {
	const n = 8
	for round := range 3 {
		key := "race/" + strconv.Itoa(round)
		var (
			wg       sync.WaitGroup
			start    = make(chan struct{})
			winners  atomic.Int32
			winner   atomic.Int32
			winTag   atomic.Value
			failures = make(chan error, n)
		)
		for i := range n {
			wg.Go(func() {
				<-start
				etag, err := s.Put(t.Context(), key, []byte("writer "+strconv.Itoa(i)), store.PutOptions{IfNoneMatch: true})
				switch {
				case err == nil:
					winners.Add(1)
					winner.Store(int32(i))
					winTag.Store(etag)
				case !errors.Is(err, store.ErrPrecondition):
					failures <- err
				}
			})
		}
		close(start)
		wg.Wait()
		close(failures)
		for err := range failures {
			require.NoError(t, err, "a losing create must fail with ErrPrecondition")
		}
		require.EqualValues(t, 1, winners.Load(), "round %d: writers that created %q", round, key)
		got, etag := get(t, s, key)
		require.Equal(t, "writer "+strconv.Itoa(int(winner.Load())), string(got))
		require.Equal(t, winTag.Load(), etag)
	}
}

func testIfMatch(t *testing.T, s store.Store) {
	ctx := t.Context()
	e1 := put(t, s, "state", []byte("v1"))
	e2, err := s.Put(ctx, "state", []byte("v2"), store.PutOptions{IfMatch: e1})
	require.NoError(t, err)
	require.NotEqual(t, e1, e2)

	_, err = s.Put(ctx, "state", []byte("v3 from a stale reader"), store.PutOptions{IfMatch: e1})
	require.ErrorIs(t, err, store.ErrPrecondition)
	got, etag := get(t, s, "state")
	require.Equal(t, "v2", string(got), "a lost compare-and-swap changed the object")
	require.Equal(t, e2, etag)

	_, err = s.Put(ctx, "state", []byte("v3"), store.PutOptions{IfMatch: "not-an-etag"})
	require.ErrorIs(t, err, store.ErrPrecondition)

	_, err = s.Put(ctx, "missing", []byte("x"), store.PutOptions{IfMatch: e2})
	require.ErrorIs(t, err, store.ErrPrecondition, "IfMatch on a missing object")
	_, _, err = s.Get(ctx, "missing", nil)
	require.ErrorIs(t, err, store.ErrNotFound)

	_, err = s.Put(ctx, "state", []byte("v3"), store.PutOptions{IfMatch: e1, IfNoneMatch: true})
	require.Error(t, err, "both conditions at once")
	got, _ = get(t, s, "state")
	require.Equal(t, "v2", string(got))
}

// testIfMatchCounter: goroutines increment one counter object by
// read-modify-write with IfMatch; no increment is lost.
func testIfMatchCounter(t *testing.T, s store.Store) {
	const workers, each = 4, 8
	put(t, s, "counter", []byte("0"))
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Go(func() {
			var buf []byte
			for done := 0; done < each; {
				data, etag, err := s.Get(t.Context(), "counter", buf)
				if err != nil {
					errs <- err
					return
				}
				buf = data
				n, err := strconv.Atoi(string(data))
				if err != nil {
					errs <- fmt.Errorf("counter holds %q: %w", data, err)
					return
				}
				_, err = s.Put(t.Context(), "counter", []byte(strconv.Itoa(n+1)), store.PutOptions{IfMatch: etag})
				switch {
				case err == nil:
					done++
				case !errors.Is(err, store.ErrPrecondition):
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	got, _ := get(t, s, "counter")
	require.Equal(t, strconv.Itoa(workers*each), string(got), "increments lost")
}

// testETagSameBytes: rewriting the same bytes gives a new ETag, so a
// compare-and-swap against the old version fails (no ABA).
func testETagSameBytes(t *testing.T, s store.Store) {
	ctx := t.Context()
	e1 := put(t, s, "state", []byte("phase=upload"))
	e2 := put(t, s, "state", []byte("phase=upload"))
	require.NotEqual(t, e1, e2, "two writes of the same bytes share an ETag")
	e3, err := s.Put(ctx, "state", []byte("phase=upload"), store.PutOptions{IfMatch: e2})
	require.NoError(t, err)
	require.NotEqual(t, e2, e3)
	_, err = s.Put(ctx, "state", []byte("phase=push"), store.PutOptions{IfMatch: e1})
	require.ErrorIs(t, err, store.ErrPrecondition)
	_, err = s.Put(ctx, "state", []byte("phase=push"), store.PutOptions{IfMatch: e2})
	require.ErrorIs(t, err, store.ErrPrecondition)

	// The same holds across keys and after a delete.
	e4 := put(t, s, "other", []byte("phase=upload"))
	require.NotEqual(t, e3, e4)
	require.NoError(t, s.Delete(ctx, "other"))
	e5 := put(t, s, "other", []byte("phase=upload"))
	require.NotEqual(t, e4, e5)
}

// testAtomicReplace: readers racing a writer that replaces an object
// with objects of other sizes always get one whole version, with the ETag
// that version's Put returned (or, where Options allow it, the ETag of an
// earlier version).
func testAtomicReplace(t *testing.T, s store.Store, opt Options) {
	// Write i is 8 bytes of i, then a run of one letter whose length
	// depends on the letter, so a reader can tell which write it got and
	// whether it got all of it.
	letters := []byte("abc")
	sizes := []int{1 << 20, 1<<20 + 333<<10, 700 << 10}
	version := func(i int) []byte {
		v := make([]byte, 8, 8+sizes[i%3])
		binary.BigEndian.PutUint64(v, uint64(i))
		return append(v, bytes.Repeat(letters[i%3:i%3+1], sizes[i%3])...)
	}
	const writes = 24
	type seen struct {
		etag  store.ETag
		write int
	}
	var (
		done  = make(chan struct{})
		wg    sync.WaitGroup
		reads = make(chan seen, 4096)
		errs  = make(chan error, 4)
	)
	etags := map[store.ETag]int{put(t, s, "chunk", version(0)): 0}
	for range 3 {
		wg.Go(func() {
			var buf []byte
			for {
				select {
				case <-done:
					return
				default:
				}
				data, etag, err := s.Get(t.Context(), "chunk", buf)
				if err != nil {
					errs <- err
					return
				}
				buf = data
				i, err := whole(data, letters, sizes)
				if err != nil {
					errs <- err
					return
				}
				select {
				case reads <- seen{etag, i}:
				default: // enough samples
				}
			}
		})
	}
	for i := 1; i <= writes; i++ {
		etag, err := s.Put(t.Context(), "chunk", version(i), store.PutOptions{})
		require.NoError(t, err)
		etags[etag] = i
	}
	close(done)
	wg.Wait()
	close(errs)
	close(reads)
	for err := range errs {
		require.NoError(t, err)
	}
	n := 0
	for r := range reads {
		n++
		w, ok := etags[r.etag]
		require.True(t, ok, "Get returned ETag %q, which no Put returned", r.etag)
		if opt.StaleETagUnderRace {
			require.LessOrEqual(t, w, r.write, "Get returned write %d with the ETag of a later write", r.write)
		} else {
			require.Equal(t, r.write, w, "Get returned write %d with the ETag of write %d", r.write, w)
		}
	}
	require.Positive(t, n)
}

// whole checks that data is exactly one write of testAtomicReplace and
// returns its number.
func whole(data, letters []byte, sizes []int) (int, error) {
	if len(data) >= 8 {
		i := int(binary.BigEndian.Uint64(data))
		if i >= 0 && i < 1000 {
			l, size := letters[i%3], sizes[i%3]
			if len(data) == 8+size && bytes.Count(data[8:], []byte{l}) == size {
				return i, nil
			}
		}
	}
	return 0, fmt.Errorf("torn read: %d bytes that match no write", len(data))
}

// testNestedKeys: "a", "a/b" and "a/b/c" are three objects, as on S3.
func testNestedKeys(t *testing.T, s store.Store) {
	all := []string{"a", "a/b", "a/b/c", "a/b/c/d", "a-b", "a.b", "a0", "deep/1/2/3/4/5/6/7/8/leaf"}
	for _, k := range all {
		put(t, s, k, []byte("object "+k))
	}
	for _, k := range all {
		got, _ := get(t, s, k)
		require.Equal(t, "object "+k, string(got))
	}
	sorted := slices.Clone(all)
	slices.Sort(sorted)
	require.Equal(t, sorted, keys(t, s, ""))

	require.NoError(t, s.Delete(t.Context(), "a/b"))
	require.Equal(t, []string{"a/b/c", "a/b/c/d"}, keys(t, s, "a/"))
	got, _ := get(t, s, "a/b/c")
	require.Equal(t, "object a/b/c", string(got))
	got, _ = get(t, s, "a")
	require.Equal(t, "object a", string(got))

	// Deleting the deepest object leaves the others listed and readable.
	require.NoError(t, s.Delete(t.Context(), "deep/1/2/3/4/5/6/7/8/leaf"))
	require.Empty(t, keys(t, s, "deep"))
	put(t, s, "deep/1/2/x", []byte("x"))
	require.Equal(t, []string{"deep/1/2/x"}, keys(t, s, "deep/"))
}

// testListPrefix: a prefix is a string prefix of the key, not a folder:
// "a/b" lists "a/bc" too, "a/b/" does not.
func testListPrefix(t *testing.T, s store.Store) {
	for _, k := range []string{"a/b", "a/bc", "a/b/c", "a/bd/e", "ab", "a/a", "b/b"} {
		put(t, s, k, []byte(k))
	}
	require.Equal(t, []string{"a/b", "a/b/c", "a/bc", "a/bd/e"}, keys(t, s, "a/b"))
	require.Equal(t, []string{"a/b/c"}, keys(t, s, "a/b/"))
	require.Equal(t, []string{"a/bc"}, keys(t, s, "a/bc"))
	require.Equal(t, []string{"a/a", "a/b", "a/b/c", "a/bc", "a/bd/e"}, keys(t, s, "a/"))
	require.Equal(t, []string{"a/a", "a/b", "a/b/c", "a/bc", "a/bd/e", "ab"}, keys(t, s, "a"))
	require.Equal(t, []string{"a/bd/e"}, keys(t, s, "a/bd/e"))
	require.Empty(t, keys(t, s, "a/bd/e/"))
	require.Empty(t, keys(t, s, "a/bx"))
	require.Empty(t, keys(t, s, "c"))
	require.Len(t, keys(t, s, ""), 7)

	// List reports each object as Stat does.
	require.NoError(t, s.List(t.Context(), "a/", func(i store.Info) error {
		st, err := s.Stat(t.Context(), i.Key)
		require.NoError(t, err)
		require.Equal(t, st.Size, i.Size, i.Key)
		require.Equal(t, int64(len(i.Key)), i.Size, i.Key)
		require.Equal(t, st.ETag, i.ETag, i.Key)
		return nil
	}))
}

// testListOrder: List is in byte order of the whole key, across folders:
// "a-" < "a." < "a/" < "a0" < "aA" < "a_" < "aa".
func testListOrder(t *testing.T, s store.Store) {
	all := []string{
		"a", "a-", "a.", "a/x", "a/-", "a/x/y", "a0", "aA", "a_", "aa", "A", "0", "_",
		"s/chunk-10", "s/chunk-9", "s/chunk-009", "s/chunk", "s/chunk/x", "s/chunk.bak", "s/Z",
	}
	for i := range 40 {
		all = append(all, fmt.Sprintf("many/%03d/part-%d", (i*37)%40, i%3))
	}
	// Write in a shuffled order: order must come from the keys.
	shuffled := slices.Clone(all)
	for i := range shuffled {
		j := (i * 7919) % len(shuffled)
		shuffled[i], shuffled[j] = shuffled[j], shuffled[i]
	}
	for _, k := range shuffled {
		put(t, s, k, []byte(k))
	}
	want := slices.Clone(all)
	slices.Sort(want)
	want = slices.Compact(want)
	require.Equal(t, want, keys(t, s, ""))
	var wantS []string
	for _, k := range want {
		if strings.HasPrefix(k, "s/chunk") {
			wantS = append(wantS, k)
		}
	}
	require.Equal(t, wantS, keys(t, s, "s/chunk"))
}

func testListStops(t *testing.T, s store.Store) {
	for i := range 5 {
		put(t, s, "k/"+strconv.Itoa(i), []byte{byte(i)})
	}
	stop := errors.New("enough")
	calls := 0
	err := s.List(t.Context(), "k/", func(store.Info) error {
		calls++
		if calls == 2 {
			return fmt.Errorf("callback: %w", stop)
		}
		return nil
	})
	require.ErrorIs(t, err, stop)
	require.Equal(t, 2, calls, "List went on after its callback failed")
}

func testLargeObject(t *testing.T, s store.Store) {
	for _, n := range []int{4_500_000, 5 << 20} {
		data := randomBytes(n)
		etag := put(t, s, "big/"+strconv.Itoa(n), data)
		got, getTag := get(t, s, "big/"+strconv.Itoa(n))
		require.Equal(t, len(data), len(got))
		require.True(t, bytes.Equal(data, got), "%d-byte object came back different", n)
		require.Equal(t, etag, getTag)
		info, err := s.Stat(t.Context(), "big/"+strconv.Itoa(n))
		require.NoError(t, err)
		require.Equal(t, int64(n), info.Size)
	}
}

// InvalidKeys are keys every store refuses.
var InvalidKeys = []string{
	"", "/", "/a", "a/", "a//b", ".", "..", "../a", "a/..", "a/../b", "a/./b",
	".hidden", "a/.b", "a b", `a\b`, "a\x00b", "a\nb", "é", "a:b", "a*", "a?b",
	"a/" + strings.Repeat("x", store.MaxSegmentLen+1),
	strings.Repeat("abcdefg/", store.MaxKeyLen/8+1) + "x",
}

func testInvalidKeys(t *testing.T, s store.Store) {
	ctx := t.Context()
	put(t, s, "valid", []byte("v"))
	for _, k := range InvalidKeys {
		_, err := s.Put(ctx, k, []byte("x"), store.PutOptions{})
		require.ErrorIs(t, err, store.ErrInvalidKey, "Put(%q)", k)
		_, err = s.Put(ctx, k, []byte("x"), store.PutOptions{IfNoneMatch: true})
		require.ErrorIs(t, err, store.ErrInvalidKey, "Put(%q, IfNoneMatch)", k)
		_, _, err = s.Get(ctx, k, nil)
		require.ErrorIs(t, err, store.ErrInvalidKey, "Get(%q)", k)
		_, err = s.Stat(ctx, k)
		require.ErrorIs(t, err, store.ErrInvalidKey, "Stat(%q)", k)
		require.ErrorIs(t, s.Delete(ctx, k), store.ErrInvalidKey, "Delete(%q)", k)
	}
	for _, p := range []string{"/", "/a", "a//", "../", "..", "a/.", ".", "a b", "é"} {
		err := s.List(ctx, p, func(store.Info) error { return nil })
		require.ErrorIs(t, err, store.ErrInvalidKey, "List(%q)", p)
	}
	require.Equal(t, []string{"valid"}, keys(t, s, ""), "an invalid key wrote something")

	// Keys at the limits are valid.
	long := strings.Repeat("x", store.MaxSegmentLen)
	put(t, s, long, []byte("l"))
	longKey := strings.Repeat(strings.Repeat("y", 63)+"/", store.MaxKeyLen/64-1) + strings.Repeat("z", 63)
	require.LessOrEqual(t, len(longKey), store.MaxKeyLen)
	put(t, s, longKey, []byte("k"))
	got, _ := get(t, s, longKey)
	require.Equal(t, "k", string(got))
	put(t, s, "Az09._-/x.y", []byte("all key bytes"))
}

func testCanceled(t *testing.T, s store.Store) {
	put(t, s, "there", []byte("x"))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := s.Put(ctx, "new", []byte("x"), store.PutOptions{})
	require.ErrorIs(t, err, context.Canceled)
	_, err = s.Put(ctx, "there", []byte("y"), store.PutOptions{IfNoneMatch: false})
	require.ErrorIs(t, err, context.Canceled)
	_, _, err = s.Get(ctx, "there", nil)
	require.ErrorIs(t, err, context.Canceled)
	_, err = s.Stat(ctx, "there")
	require.ErrorIs(t, err, context.Canceled)
	require.ErrorIs(t, s.Delete(ctx, "there"), context.Canceled)
	require.ErrorIs(t, s.List(ctx, "", func(store.Info) error { return nil }), context.Canceled)

	// Nothing a canceled call was asked to do happened.
	_, err = s.Stat(t.Context(), "new")
	require.ErrorIs(t, err, store.ErrNotFound)
	got, _ := get(t, s, "there")
	require.Equal(t, "x", string(got))

	// A deadline that passed counts too.
	ctx, cancel = context.WithDeadline(t.Context(), time.Now().Add(-time.Second))
	defer cancel()
	_, _, err = s.Get(ctx, "there", nil)
	require.ErrorIs(t, err, context.DeadlineExceeded)
}

// testConcurrentKeys: writers and deleters working on sibling keys of the
// same folders do not disturb each other (a store that removes empty
// folders must not remove one a writer is about to use).
func testConcurrentKeys(t *testing.T, s store.Store) {
	const workers, rounds = 6, 10
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for r := range rounds {
				key := fmt.Sprintf("sessions/%d/chunk-%d", r%2, w)
				data := []byte(key + " round " + strconv.Itoa(r))
				if _, err := s.Put(t.Context(), key, data, store.PutOptions{}); err != nil {
					errs <- err
					return
				}
				got, _, err := s.Get(t.Context(), key, nil)
				if err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, data) {
					errs <- fmt.Errorf("%q holds %q, want %q", key, got, data)
					return
				}
				if err := s.Delete(t.Context(), key); err != nil {
					errs <- err
					return
				}
			}
			if _, err := s.Put(t.Context(), fmt.Sprintf("sessions/final/%d", w), []byte("kept"), store.PutOptions{}); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	var want []string
	for w := range workers {
		want = append(want, fmt.Sprintf("sessions/final/%d", w))
	}
	require.Equal(t, want, keys(t, s, "sessions/"))
}

// ChunkSize is the size of a sealed upload chunk: just under the 4.5 MB
// body limit of the serverless edge in front of the relay.
const ChunkSize = 4_500_000

// Bench runs the store benchmarks as sub-benchmarks of b: whole chunks in
// and out, and the small compare-and-swap of a session's state.
func Bench(b *testing.B, newStore Factory) {
	chunk := randomBytes(ChunkSize)
	b.Run("Put4.5MB", func(b *testing.B) {
		s := newStore(b)
		b.SetBytes(ChunkSize)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			// Eight keys in turn: overwrites, as a retried upload does,
			// with the store's size bounded.
			if _, err := s.Put(b.Context(), "push/s1/chunk-"+strconv.Itoa(i%8), chunk, store.PutOptions{}); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("Put4.5MBParallel", func(b *testing.B) {
		s := newStore(b)
		b.SetBytes(ChunkSize)
		var next atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				key := "push/s2/chunk-" + strconv.Itoa(int(next.Add(1)%16))
				if _, err := s.Put(b.Context(), key, chunk, store.PutOptions{}); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("Get4.5MB", func(b *testing.B) {
		s := newStore(b)
		if _, err := s.Put(b.Context(), "fetch/s1/chunk-0", chunk, store.PutOptions{}); err != nil {
			b.Fatal(err)
		}
		b.SetBytes(ChunkSize)
		b.ReportAllocs()
		var buf []byte
		for b.Loop() {
			var err error
			if buf, _, err = s.Get(b.Context(), "fetch/s1/chunk-0", buf); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("CASState", func(b *testing.B) {
		// One op: read the state, write it back if unchanged (IfMatch).
		s := newStore(b)
		state := bytes.Repeat([]byte("x"), 300)
		if _, err := s.Put(b.Context(), "push/s1/state", state, store.PutOptions{}); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		var buf []byte
		for b.Loop() {
			data, etag, err := s.Get(b.Context(), "push/s1/state", buf)
			if err != nil {
				b.Fatal(err)
			}
			buf = data
			if _, err := s.Put(b.Context(), "push/s1/state", data, store.PutOptions{IfMatch: etag}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
