package server

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"time"

	"github.com/git-relay/git-relay/internal/wire"
)

// janitor removes abandoned and finished sessions: unfinished pushes after
// the session TTL, finished pushes and fetches after an hour.
func (s *Server) janitor(ctx context.Context) {
	t := time.NewTicker(10 * time.Minute)
	defer t.Stop()
	for {
		s.sweep(time.Now())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *Server) sweep(now time.Time) {
	dir := filepath.Join(s.cfg.DataDir, "sessions")
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		ps, err := s.readPush(e.Name())
		if err != nil {
			// A session without a readable state is debris from a crash
			// between mkdir and the first write.
			if info, err := e.Info(); err == nil && now.Sub(info.ModTime()) > time.Hour {
				os.RemoveAll(filepath.Join(dir, e.Name()))
			}
			continue
		}
		age := now.Sub(ps.state.Updated)
		switch ps.state.Phase {
		case wire.PhaseReceiving:
			if age > s.ttl {
				s.log.Info("expiring push session", "session", ps.id)
				s.takePartHash(ps.id)
				os.RemoveAll(ps.dir)
			}
		case wire.PhaseDone, wire.PhaseFailed:
			if age > time.Hour {
				os.RemoveAll(ps.dir)
			}
		}
	}
	fdir := filepath.Join(s.cfg.DataDir, "fetches")
	entries, _ = os.ReadDir(fdir)
	for _, e := range entries {
		var st fetchState
		b, err := os.ReadFile(filepath.Join(fdir, e.Name(), "state.json"))
		if err == nil && json.Unmarshal(b, &st) == nil && now.Sub(st.Created) < time.Hour {
			continue
		}
		if info, err := e.Info(); err == nil && now.Sub(info.ModTime()) < time.Hour {
			continue
		}
		os.RemoveAll(filepath.Join(fdir, e.Name()))
	}
}
