package wshub

import (
	"context"
	"fmt"
	"net/http"
	"time"
)

// How Drain paces its closes (see Drain).
const (
	// drainBatch is the fewest sessions one batch closes: a node with this
	// many sessions or fewer closes them all at once.
	drainBatch = 8
	// drainPause is the time between two batches.
	drainPause = 100 * time.Millisecond
	// drainMaxSpread is the longest the batches are spread over.
	drainMaxSpread = 5 * time.Second
	// drainRetryAfter is the Retry-After of an upgrade refused while the
	// node drains or closes: another node can take it at once.
	drainRetryAfter = "1"
)

// drainState is what Drain keeps in the hub.
type drainState struct {
	on bool // Drain was called; guarded by Hub.mu, never cleared

	// pace is how the closes are spread; tests change it. A zero field
	// takes its default above.
	pace drainPace
	// beforeBatch, set by tests, is called with each batch just before
	// its sessions are closed.
	beforeBatch func(batch []*Session)
}

// drainPace is how Drain spreads its closes.
type drainPace struct {
	batch     int           // sessions per batch, at least
	pause     time.Duration // between batches
	maxSpread time.Duration // the longest the batches take in all
}

func (p drainPace) withDefaults() drainPace {
	setDefault(&p.batch, drainBatch)
	setDefault(&p.pause, drainPause)
	setDefault(&p.maxSpread, drainMaxSpread)
	return p
}

// batchSize returns how many of n sessions one batch closes, so that the
// batches, one every pause, take at most spread in all.
func (p drainPace) batchSize(n int, spread time.Duration) int {
	slots := max(1, int(spread/p.pause))
	return max(p.batch, (n+slots-1)/slots)
}

// serviceState is where a hub is in its life, for the health handlers.
type serviceState int

const (
	stateServing serviceState = iota
	stateDraining
	stateClosed
)

func (h *Hub) serviceState() serviceState {
	h.mu.RLock()
	defer h.mu.RUnlock()
	switch {
	case h.closed:
		return stateClosed
	case h.drain.on:
		return stateDraining
	}
	return stateServing
}

// refuseShuttingDown answers an upgrade that comes once the hub drains or
// closes: 503, with a Retry-After that sends the client on to another node
// at once.
func refuseShuttingDown(w http.ResponseWriter) {
	w.Header().Set("Retry-After", drainRetryAfter)
	http.Error(w, "wshub: shutting down", http.StatusServiceUnavailable)
}

// Drain takes the node out of service before a restart, so that its
// clients move to other nodes promptly but not all at the same instant.
//
// At once, ReadinessHandler answers 503 "draining" and new upgrades are
// refused with 503 and "Retry-After: 1". Then the node's sessions are closed
// in batches, each session after it has sent what it had queued, with status
// 1012 (StatusServiceRestart, "service restart"): a client reconnects at
// once, through the load balancer, to a node that is ready. Clients that
// resume (see "Resume" in the package documentation) then miss nothing on a
// backplane that keeps logs, such as Redis in Streams mode.
//
// The batches come one every 100ms, spread over half the time left before
// ctx's deadline but no more than 5s (5s without a deadline), and hold at
// least 8 sessions: 8 sessions or fewer are closed at once, 1,000 sessions
// with 20s left go in 50 batches of 20 over 5s. The other half of the time
// is left for the sessions to send what they had queued and finish their
// close handshakes. A session that opens meanwhile (its upgrade had begun
// before Drain) is closed the same way.
//
// Drain returns nil once every session of the node has ended, or, when ctx
// ends first, closes the sessions not yet closed at once (1012) and returns
// an error wrapping ctx.Err() without waiting for them. Either way the node
// stays out of service: there is no undoing Drain. Call Close next, which
// also closes, with 1001, whatever is left. Drain may be called more than
// once, and while or after Close runs; each call waits for the sessions.
//
// In Kubernetes, when a pod is deleted (a rolling update), the kubelet runs
// the container's preStop hook, then sends SIGTERM, and kills the container
// terminationGracePeriodSeconds (default 30) after the deletion, preStop
// included. Call Drain on SIGTERM with a context that leaves time for Close
// and http.Server.Shutdown within the grace period, for example:
//
//	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
//	defer stop()
//	<-ctx.Done()
//	dctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
//	err := hub.Drain(dctx) // readiness fails; sessions leave in batches
//	cancel()
//	cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
//	defer cancel()
//	err = errors.Join(err, hub.Close(cctx), srv.Shutdown(cctx))
//
// with terminationGracePeriodSeconds above the sum (30 fits 15 + 10).
// Kubernetes removes a terminating pod from the Service's endpoints by
// itself, but that reaches kube-proxy and the load balancers a moment
// later; a short preStop sleep (a few seconds) lets it arrive before Drain
// starts refusing, and the 503 and Retry-After cover what still comes. A
// load balancer that follows only its own health checks (a cloud load
// balancer, nginx with active checks, a VM deploy) learns of the drain from
// ReadinessHandler.
func (h *Hub) Drain(ctx context.Context) error {
	h.mu.Lock()
	closed := h.closed
	h.drain.on = true
	// From here no ServeHTTP call takes a session (it checks under mu),
	// so the wait below cannot race an Add.
	hook, pace := h.drain.beforeBatch, h.drain.pace.withDefaults()
	h.mu.Unlock()

	done := make(chan struct{})
	go func() { h.conns.Wait(); close(done) }() // ends with the sessions

	if !closed {
		// What this node published just before reaches its sessions
		// before they close, as in Close.
		h.flushInbox(ctx)
	}
	spread := pace.maxSpread
	if dl, ok := ctx.Deadline(); ok {
		spread = min(spread, time.Until(dl)/2)
	}
	size := pace.batchSize(h.reg.len(), spread)
	asked := make(map[*Session]struct{})
	pause := time.NewTimer(pace.pause)
	defer pause.Stop()
	for {
		// The sessions not asked yet: those there were, and any that an
		// upgrade under way when Drain began has registered since.
		if pending := h.reg.except(asked); len(pending) > 0 {
			batch := pending[:min(size, len(pending))]
			if hook != nil {
				hook(batch)
			}
			for _, s := range batch {
				asked[s] = struct{}{}
				_ = s.Close(StatusServiceRestart, "service restart")
			}
		}
		pause.Reset(pace.pause)
		select {
		case <-done: // every session has ended
			return nil
		case <-pause.C:
		case <-ctx.Done():
			for _, s := range h.reg.except(asked) {
				_ = s.Close(StatusServiceRestart, "service restart")
			}
			return fmt.Errorf("wshub: drain: %w", ctx.Err())
		}
	}
}

// except returns the registered sessions that are not in skip.
func (r *registry) except(skip map[*Session]struct{}) []*Session {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var list []*Session
	for _, s := range r.sessions {
		if _, ok := skip[s]; !ok {
			list = append(list, s)
		}
	}
	return list
}
