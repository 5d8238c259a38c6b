package server

import (
	"context"
	"sync"
	"time"

	"github.com/git-relay/git-relay/internal/upstream"
)

// A push's conversation with upstream begins when its client lists
// upstream's refs for it (wire.KindRefs), not when the push opens: the
// client checks and bundles in between, and upstream's receive-pack (or,
// over HTTP, its advertisement) is ready when the push comes. That is a
// round trip to upstream a small push no longer waits for: to an HTTP
// upstream 40 ms away, one-commit pushes took 402 ms instead of 485
// (medians of 7); a file:// receive-pack starts in 15 to 22 ms here.
//
// The receive-pack so started knows nothing of the push: the push sends
// its old ids as always, and upstream refuses an update whose ref moved
// since. One waits per key and repository, for parkFor; the next listing
// replaces it, and the push takes it. Another instance of a cluster, or a
// push that comes later, prepares its own.

// parkFor is how long a push begun at a listing waits for its push.
const parkFor = 5 * time.Second

// maxParked bounds the pushes begun at listings, server-wide: each may
// be a receive-pack.
const maxParked = 16

// parkedPush is a push to upstream begun at a listing.
type parkedPush struct {
	pre    *upstream.Prepared
	cancel context.CancelFunc
	timer  *time.Timer
}

type parkKey struct{ repo, key string }

// parking holds the pushes begun at listings.
type parking struct {
	mu     sync.Mutex
	m      map[parkKey]*parkedPush
	ending sync.WaitGroup // ends under way of those taken out of m unused
}

// park begins a push to m's upstream for the next push of key.
func (s *Server) park(m *mirror, key string) {
	k := parkKey{m.name, key}
	s.parked.mu.Lock()
	defer s.parked.mu.Unlock()
	if s.stopping.Load() {
		return
	}
	if old := s.parked.m[k]; old != nil {
		delete(s.parked.m, k)
		old.timer.Stop()
		s.parked.ending.Add(1)
		go func() {
			defer s.parked.ending.Done()
			old.end()
		}()
	}
	if len(s.parked.m) >= maxParked {
		return
	}
	if s.parked.m == nil {
		s.parked.m = map[parkKey]*parkedPush{}
	}
	ctx, cancel := context.WithCancel(s.ctx)
	p := &parkedPush{pre: m.remote.Prepare(ctx), cancel: cancel}
	s.parked.m[k] = p
	p.timer = time.AfterFunc(s.parkFor(), func() {
		s.parked.mu.Lock()
		mine := s.parked.m[k] == p
		if mine {
			delete(s.parked.m, k)
			s.parked.ending.Add(1)
		}
		s.parked.mu.Unlock()
		if mine {
			defer s.parked.ending.Done()
			p.end()
		}
	})
}

// takeParked returns the push begun for key's push to m, or nil. The push
// then owns it, for as long as ctx lasts; done ends it.
func (s *Server) takeParked(ctx context.Context, m *mirror, key string) (pre *upstream.Prepared, done func()) {
	k := parkKey{m.name, key}
	s.parked.mu.Lock()
	p := s.parked.m[k]
	delete(s.parked.m, k)
	s.parked.mu.Unlock()
	if p == nil {
		return nil, nil
	}
	p.timer.Stop()
	s.metrics.pushesParked.Inc()
	stop := context.AfterFunc(ctx, p.cancel)
	return p.pre, func() {
		stop()
		p.end()
	}
}

// end closes a push begun at a listing: receive-pack, if nothing was sent
// to it, is told there is nothing to do.
func (p *parkedPush) end() {
	p.pre.Close()
	p.cancel()
}

// unparkAll ends the pushes still waiting, at shutdown, once no listing
// can park another (Server.stopping), and waits for those ending.
func (s *Server) unparkAll() {
	s.parked.mu.Lock()
	all := s.parked.m
	s.parked.m = nil
	s.parked.mu.Unlock()
	for _, p := range all {
		p.timer.Stop()
		p.end()
	}
	s.parked.ending.Wait()
}

func (s *Server) parkFor() time.Duration {
	if s.cfg.parkFor > 0 {
		return s.cfg.parkFor
	}
	return parkFor
}
