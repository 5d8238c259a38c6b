package store_test

import (
	"testing"

	"github.com/git-relay/git-relay/internal/s3test"
	"github.com/git-relay/git-relay/internal/store"
	"github.com/git-relay/git-relay/internal/store/storetest"
)

// BenchmarkStore compares the local folder with S3 (versitygw on
// loopback, itself writing to the same disk):
//
//	go test -run '^$' -bench BenchmarkStore ./internal/store/
func BenchmarkStore(b *testing.B) {
	b.Run("local", func(b *testing.B) {
		storetest.Bench(b, func(tb testing.TB) store.Store {
			s, err := store.NewLocal(tb.TempDir())
			if err != nil {
				tb.Fatal(err)
			}
			return s
		})
	})
	b.Run("s3", func(b *testing.B) {
		srv := s3test.Start(b)
		storetest.Bench(b, func(tb testing.TB) store.Store { return newS3(tb, srv, randomPrefix(), srv.Endpoint) })
	})
}
