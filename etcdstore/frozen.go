package etcdstore

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// A frozen member (SIGSTOP, a hung VM, a long disk stall) keeps its TCP
// connection open, so gRPC keeps handing it calls until keepalive gives up
// on it, 13 s later (gRPC pings no more often than every 10 s). Each of
// those calls costs an attempt (attemptTimeout), and a request whose
// attempts keep landing there runs out of time. So when an attempt times
// out, the store asks every member for its status at once, within
// probeTimeout, and sends calls only to those that answer, asking the
// others again every probeEvery until all answer.
const (
	probeTimeout = time.Second
	probeEvery   = time.Second
)

// avoidance is the members the client is pointed at, and the probe that
// maintains that.
type avoidance struct {
	all     []string // as configured
	mu      sync.Mutex
	probing bool
}

// timedOut reports whether err ended an attempt (not the caller's ctx),
// and if so starts the probe.
func (s *Store) timedOut(ctx context.Context, err error) {
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil && len(s.avoid.all) > 1 {
		s.startProbe()
	}
}

func (s *Store) startProbe() {
	a := &s.avoid
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.probing {
		return
	}
	a.probing = true
	go s.probe()
}

// probe points the client at the members that answer until all do.
func (s *Store) probe() {
	a := &s.avoid
	for s.cli.Ctx().Err() == nil {
		var answering []string
		for _, st := range s.statuses(s.cli.Ctx(), a.all, probeTimeout) {
			if !st.unreachable {
				answering = append(answering, st.Endpoint)
			}
		}
		if len(answering) == 0 {
			answering = a.all // nothing to prefer
		}
		if !slices.Equal(answering, s.cli.Endpoints()) {
			slog.Warn("sending etcd calls only to the members that answer", "answering", answering, "all", a.all)
			s.cli.SetEndpoints(answering...)
		}
		if len(answering) == len(a.all) {
			a.mu.Lock()
			a.probing = false
			a.mu.Unlock()
			return
		}
		time.Sleep(probeEvery)
	}
}
