package store_test

import (
	"testing"

	"github.com/git-relay/git-relay/internal/store"
	"github.com/git-relay/git-relay/internal/store/storetest"
)

func TestLocalConformance(t *testing.T) {
	storetest.Run(t, func(tb testing.TB) store.Store {
		s, err := store.NewLocal(tb.TempDir())
		if err != nil {
			tb.Fatal(err)
		}
		return s
	})
}
