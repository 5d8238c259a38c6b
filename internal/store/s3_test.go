package store_test

import (
	"crypto/rand"
	"encoding/hex"
	"testing"

	"github.com/git-relay/git-relay/internal/s3test"
	"github.com/git-relay/git-relay/internal/store"
	"github.com/git-relay/git-relay/internal/store/storetest"
)

// newS3 opens a store in a fresh prefix of srv's bucket, so that every
// subtest starts empty without starting a server of its own.
func newS3(tb testing.TB, srv *s3test.Server) store.Store {
	tb.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	s, err := store.NewS3(tb.Context(), store.S3Config{
		Bucket:          srv.Bucket,
		Prefix:          "t-" + hex.EncodeToString(b[:]) + "/",
		Endpoint:        srv.Endpoint,
		Region:          srv.Region,
		AccessKeyID:     srv.AccessKeyID,
		SecretAccessKey: srv.SecretAccessKey,
	})
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func TestS3Conformance(t *testing.T) {
	srv := s3test.Start(t)
	storetest.Run(t, func(tb testing.TB) store.Store { return newS3(tb, srv) })
}
