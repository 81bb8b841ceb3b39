package redis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/wshub/wshub/backplane"
)

// subscribeChunk is the most channels sent in one SUBSCRIBE command.
const subscribeChunk = 4096

// Reconnect backoff bounds.
const (
	minBackoff = 50 * time.Millisecond
	maxBackoff = 2 * time.Second
)

// upMarker is the payload of the PING that follows a generation's
// subscriptions.
const upMarker = "wshub-up"

// errProbeLost marks a subscription whose probes stopped coming back.
var errProbeLost = errors.New("probe did not come back")

// subscriberConfig is what a subscriber needs from its backplane.
type subscriberConfig struct {
	ctx           context.Context         // ends when the backplane closes
	client        goredis.UniversalClient // makes the subscription connections
	sharded       bool                    // SSUBSCRIBE instead of SUBSCRIBE
	probeChannel  string                  // this node's probe channel on the shard
	probeInterval time.Duration           // Options.ProbeInterval
	probeTimeout  time.Duration           // Options.ProbeTimeout
	// mode does what depends on the backplane's type: what is done with a
	// message, when a generation comes up, and on Subscribe.
	mode shardMode
	// publish sends a probe with a plain (S)PUBLISH.
	publish func(ctx context.Context, channel string, payload []byte) error
	// spawn runs f on a goroutine that the backplane waits for on Close.
	spawn func(f func())
	// down is told that the subscriber threw its connection away, because
	// of err, and counts as down; up that it receives again, and whether
	// messages may be missing.
	down func(err error)
	up   func(gap bool)
}

// subscriber owns the subscription connection of one shard.
//
// Each connection is a generation: a fresh subConn subscribed to
// everything the shard wants. When it fails (a read error, or probes that
// stop coming back) the generation is thrown away whole and a new one is
// built; go-redis's own reconnect is never relied on, so every confirmation
// and message is known to belong to the current connection.
type subscriber struct {
	cfg    subscriberConfig
	probeC string // cfg.probeChannel

	mu sync.Mutex
	// want holds the Redis channels this shard holds, each its own key,
	// so that a message's channel is found without a copy.
	want map[string]string
	// waiters wait for SUBSCRIBE confirmations, by Redis channel.
	waiters map[string][]*waiter
	// conn is the current generation, nil while reconnecting.
	conn subConn
	gen  uint64
	up   bool // the current generation confirmed its subscriptions
	// isDown says whether this subscriber counts as down in the backplane.
	isDown bool
	everUp bool // some generation was up: a later outage may lose messages
	// unsubSent and unsubAcked count UNSUBSCRIBE commands per channel on
	// the current connection, so that a SUBSCRIBE confirmation that was
	// sent before a later UNSUBSCRIBE does not release a later waiter.
	unsubSent, unsubAcked map[string]uint64
	// probeToken is the payload of the probe outstanding on the current
	// generation, unguessable and matched exactly, so that nothing another
	// client publishes on the probe channel counts as an answer; empty
	// when none is outstanding. probeSent is when Redis accepted it, or
	// when publishing it failed; zero before either.
	probeToken string
	probeSent  time.Time
	lastErr    error
	closed     bool
	kill       chan struct{} // closed to end the current generation
}

// waiter is one Subscribe call waiting for its channels' confirmations.
type waiter struct {
	pending map[string]uint64 // channel → unsubAcked needed first
	done    chan struct{}
	err     error
}

func newSubscriber(cfg subscriberConfig) *subscriber {
	return &subscriber{
		cfg:        cfg,
		probeC:     cfg.probeChannel,
		want:       make(map[string]string),
		waiters:    make(map[string][]*waiter),
		unsubSent:  make(map[string]uint64),
		unsubAcked: make(map[string]uint64),
		kill:       make(chan struct{}),
	}
}

// run builds generations until the backplane closes.
func (s *subscriber) run() {
	backoff := minBackoff
	for {
		conn, kill, err := s.connect()
		if conn != nil {
			// The watcher closes the connection when the generation is
			// killed, which makes the blocked receive return.
			genDone := make(chan struct{})
			watcher := make(chan struct{})
			go func() {
				defer close(watcher)
				select {
				case <-kill:
					_ = conn.close()
				case <-genDone:
				}
			}()
			err = s.receive(conn, kill)
			close(genDone)
			<-watcher
			_ = conn.close()
			if s.isUp() {
				// Only a generation that came up resets the backoff: one
				// whose every SUBSCRIBE Redis refuses (NOPERM, MOVED)
				// must not reconnect at full speed.
				backoff = minBackoff
			}
		}
		if cc, ok := s.cfg.client.(*goredis.ClusterClient); ok && isMoved(err) {
			// The slot moved: learn its new owner before the next dial.
			cc.ReloadState(s.cfg.ctx)
		}
		if !s.endGeneration(err) {
			return
		}
		t := time.NewTimer(backoff)
		select {
		case <-s.cfg.ctx.Done():
			t.Stop()
			s.endGeneration(nil)
			return
		case <-t.C:
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// connect starts a generation subscribed to everything the shard wants.
// A PING follows the subscriptions: its reply, which Redis sends after
// every confirmation before it, marks the generation up.
func (s *subscriber) connect() (subConn, chan struct{}, error) {
	ctx := s.cfg.ctx
	// Dialing happens outside the lock, so that Subscribe calls never wait
	// for a dial. With a cluster, the probe channel picks the node: the
	// master of the shard's slot.
	ps, err := dialSubConn(ctx, s.cfg.client, s.cfg.sharded, s.probeC)
	if err != nil {
		return nil, nil, err
	}
	if err := s.send(ctx, ps, "subscribe", []string{s.probeC}); err != nil {
		_ = ps.close()
		return nil, nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		_ = ps.close()
		return nil, nil, backplane.ErrClosed
	}
	names := make([]string, 0, len(s.want))
	for ch := range s.want {
		names = append(names, ch)
	}
	for len(names) > 0 {
		n := min(len(names), subscribeChunk)
		if err := s.send(ctx, ps, "subscribe", names[:n]); err != nil {
			_ = ps.close()
			return nil, nil, err
		}
		names = names[n:]
	}
	if err := ps.send(ctx, "PING", []string{upMarker}); err != nil {
		_ = ps.close()
		return nil, nil, err
	}
	s.conn = ps
	s.gen++
	s.up = false
	s.probeToken, s.probeSent = "", time.Time{}
	s.kill = make(chan struct{})
	clear(s.unsubSent)
	clear(s.unsubAcked)
	for _, ws := range s.waiters {
		for _, w := range ws {
			for ch := range w.pending {
				w.pending[ch] = 0
			}
		}
	}
	return ps, s.kill, nil
}

// send writes a (S)SUBSCRIBE or (S)UNSUBSCRIBE command for names.
func (s *subscriber) send(ctx context.Context, conn subConn, op string, names []string) error {
	switch {
	case op == "subscribe" && s.cfg.sharded:
		return conn.send(ctx, "SSUBSCRIBE", names)
	case op == "subscribe":
		return conn.send(ctx, "SUBSCRIBE", names)
	case s.cfg.sharded:
		return conn.send(ctx, "SUNSUBSCRIBE", names)
	default:
		return conn.send(ctx, "UNSUBSCRIBE", names)
	}
}

// receive reads the generation's messages until it fails or is killed.
func (s *subscriber) receive(conn subConn, kill chan struct{}) error {
	for {
		m, err := conn.receive()
		if err != nil {
			select {
			case <-kill:
				return errProbeLost
			default:
			}
			return err
		}
		switch m.kind {
		case pushMessage:
			s.onMessage(m.channel, m.payload)
		case pushPong:
			if string(m.payload) == upMarker {
				s.onUp()
			}
		default:
			if err := s.onSubscription(m.kind, string(m.channel)); err != nil {
				return err
			}
		}
	}
}

// onMessage handles a message of the current generation. channel is
// valid only until it returns; payload is handed on.
func (s *subscriber) onMessage(channel, payload []byte) {
	s.mu.Lock()
	if string(channel) == s.probeC {
		if s.probeToken != "" && string(payload) == s.probeToken {
			s.probeToken, s.probeSent = "", time.Time{}
		}
		s.mu.Unlock()
		return
	}
	name, ok := s.want[string(channel)]
	catchingUp := !s.up && s.everUp
	s.mu.Unlock()
	if ok {
		s.cfg.mode.message(name, payload, catchingUp)
	}
}

// onSubscription handles a confirmation of the current generation.
func (s *subscriber) onSubscription(kind pushKind, channel string) error {
	s.mu.Lock()
	switch kind {
	case pushSubscribe:
		acked := s.unsubAcked[channel]
		ws := s.waiters[channel]
		keep := ws[:0]
		for _, w := range ws {
			if w.pending[channel] <= acked {
				w.confirm(channel)
			} else {
				keep = append(keep, w)
			}
		}
		if len(keep) == 0 {
			delete(s.waiters, channel)
		} else {
			s.waiters[channel] = keep
		}
	case pushUnsubscribe:
		s.ackUnsubLocked(channel)
	case pushSUnsubscribe:
		if _, ok := s.want[channel]; ok || channel == s.probeC {
			if s.unsubAcked[channel] >= s.unsubSent[channel] {
				// Redis dropped a shard channel we hold: its slot moved
				// to another master. Rebuild on the new owner.
				s.mu.Unlock()
				return fmt.Errorf("shard channel %q moved", channel)
			}
		}
		s.ackUnsubLocked(channel)
	}
	s.mu.Unlock()
	return nil
}

// onUp marks the generation up once every subscription it started with
// is confirmed.
func (s *subscriber) onUp() {
	s.mu.Lock()
	if s.up {
		s.mu.Unlock()
		return
	}
	s.up = true
	s.probeSent = time.Time{}
	wasDown, gap := s.isDown, s.everUp
	s.mu.Unlock()
	gap = s.cfg.mode.up(gap, s.busy)
	s.mu.Lock()
	s.isDown = false
	s.everUp = true
	s.lastErr = nil
	s.mu.Unlock()
	if wasDown {
		s.cfg.up(gap)
	}
}

// isUp reports whether the current generation came up.
func (s *subscriber) isUp() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.up
}

// busy restarts the clock of an outstanding probe: the receiving
// goroutine is at work, not dead.
func (s *subscriber) busy() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.probeSent.IsZero() {
		s.probeSent = time.Now()
	}
}

func (s *subscriber) ackUnsubLocked(ch string) {
	s.unsubAcked[ch]++
	if s.unsubAcked[ch] >= s.unsubSent[ch] {
		// Nothing is pending for ch: every waiter's condition holds, so
		// the counters can restart from zero.
		delete(s.unsubAcked, ch)
		delete(s.unsubSent, ch)
		for _, w := range s.waiters[ch] {
			if _, ok := w.pending[ch]; ok {
				w.pending[ch] = 0
			}
		}
	}
}

// confirm marks ch confirmed; the last one releases the waiter.
func (w *waiter) confirm(ch string) {
	if _, ok := w.pending[ch]; !ok {
		return
	}
	delete(w.pending, ch)
	if len(w.pending) == 0 {
		close(w.done)
	}
}

// endGeneration throws the current generation away and reports whether run
// should build another.
func (s *subscriber) endGeneration(err error) bool {
	s.mu.Lock()
	closed := s.closed || s.cfg.ctx.Err() != nil
	s.conn = nil
	s.up = false
	s.probeToken, s.probeSent = "", time.Time{}
	report := !closed && !s.isDown && err != nil
	if report {
		s.isDown = true
		s.lastErr = err
	}
	if closed {
		for ch, ws := range s.waiters {
			for _, w := range ws {
				if w.err == nil {
					w.err = backplane.ErrClosed
				}
				w.confirm(ch)
			}
		}
		clear(s.waiters)
	}
	s.mu.Unlock()
	if report {
		s.cfg.down(err)
	}
	return !closed
}

// subscribe adds names (Redis channels of this shard) and waits for their
// confirmation. On failure the names this call added are dropped again.
func (s *subscriber) subscribe(ctx context.Context, names []string) error {
	hold, err := s.cfg.mode.prepare(ctx, names)
	if err != nil {
		return err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return backplane.ErrClosed
	}
	if err := s.downErrLocked(); err != nil {
		s.mu.Unlock()
		return err
	}
	w := &waiter{pending: make(map[string]uint64, len(names)), done: make(chan struct{})}
	var added []string
	for _, ch := range names {
		if _, ok := s.want[ch]; !ok {
			s.want[ch] = ch
			added = append(added, ch)
			hold(ch)
		}
		w.pending[ch] = s.unsubSent[ch]
	}
	// The generation's first SUBSCRIBE covers want; a later one must be
	// sent. Either way a confirmation comes for each name.
	for ch := range w.pending {
		s.waiters[ch] = append(s.waiters[ch], w)
	}
	// Before the first generation, its first SUBSCRIBE will carry names.
	conn, gen := s.conn, s.gen
	for i := 0; conn != nil && i < len(names) && err == nil; i += subscribeChunk {
		err = s.send(ctx, conn, "subscribe", names[i:min(i+subscribeChunk, len(names))])
	}
	s.mu.Unlock()

	if err == nil {
		select {
		case <-w.done:
			err = w.err
		case <-ctx.Done():
			err = ctx.Err()
		}
	} else {
		err = fmt.Errorf("%w: %w", backplane.ErrUnavailable, err)
		s.kick(gen)
	}
	if err != nil {
		s.abandon(ctx, w, added)
	}
	return err
}

// abandon removes a failed waiter and the names its call added.
func (s *subscriber) abandon(ctx context.Context, w *waiter, added []string) {
	s.mu.Lock()
	for ch := range w.pending {
		ws := s.waiters[ch]
		for i, x := range ws {
			if x == w {
				ws = append(ws[:i], ws[i+1:]...)
				break
			}
		}
		if len(ws) == 0 {
			delete(s.waiters, ch)
		} else {
			s.waiters[ch] = ws
		}
	}
	s.mu.Unlock()
	if len(added) > 0 {
		// Not with ctx, which may have ended: an UNSUBSCRIBE written past
		// its deadline would fail and take the shard's connection down.
		s.unsubscribe(context.WithoutCancel(ctx), added)
	}
}

// unsubscribe drops names at once and tells Redis without waiting for it.
func (s *subscriber) unsubscribe(ctx context.Context, names []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var drop []string
	for _, ch := range names {
		if _, ok := s.want[ch]; !ok {
			continue
		}
		delete(s.want, ch)
		s.cfg.mode.drop(ch)
		drop = append(drop, ch)
		// A Subscribe still waiting for ch is overtaken by this call.
		for _, w := range s.waiters[ch] {
			w.confirm(ch)
		}
		delete(s.waiters, ch)
		if s.conn != nil {
			s.unsubSent[ch]++
		}
	}
	if s.conn == nil || len(drop) == 0 {
		return
	}
	var err error
	for i := 0; i < len(drop) && err == nil; i += subscribeChunk {
		err = s.send(ctx, s.conn, "unsubscribe", drop[i:min(i+subscribeChunk, len(drop))])
	}
	if err != nil {
		// The connection is broken; the next generation starts without
		// these channels.
		s.kickLocked(s.gen)
	}
}

// kick ends generation gen if it is still the current one.
func (s *subscriber) kick(gen uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.kickLocked(gen)
}

func (s *subscriber) kickLocked(gen uint64) {
	if s.conn == nil || s.gen != gen {
		return
	}
	// run's watcher closes the connection.
	select {
	case <-s.kill:
	default:
		close(s.kill)
	}
}

// probe publishes a probe on the shard, unless one is outstanding, and
// ends the generation when that one has been outstanding longer than
// ProbeTimeout.
func (s *subscriber) probe(now time.Time) {
	s.mu.Lock()
	if s.conn == nil || !s.up {
		s.mu.Unlock()
		return
	}
	if s.probeToken != "" {
		if !s.probeSent.IsZero() && now.Sub(s.probeSent) > s.cfg.probeTimeout {
			s.kickLocked(s.gen)
		}
		s.mu.Unlock()
		return
	}
	var b [16]byte
	_, _ = rand.Read(b[:])
	token := hex.EncodeToString(b[:])
	// The token is set before the probe is sent: its answer may come
	// back before Publish returns.
	s.probeToken = token
	gen := s.gen
	s.mu.Unlock()
	s.cfg.spawn(func() {
		ctx, cancel := context.WithTimeout(s.cfg.ctx, s.cfg.probeInterval)
		defer cancel()
		err := s.cfg.publish(ctx, s.probeC, []byte(token))
		// The probe's clock starts when Redis took it (a busy publisher
		// is not a dead subscription), or when publishing it failed (a
		// link that is down both ways).
		at := time.Now()
		if err != nil {
			at = now
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.gen == gen && s.probeToken == token && s.probeSent.IsZero() {
			s.probeSent = at
		}
	})
}

// health returns why the shard is not delivering, or nil.
func (s *subscriber) health(now time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.conn == nil || !s.up:
		if s.lastErr != nil {
			return s.lastErr
		}
		return errors.New("connecting")
	case !s.probeSent.IsZero() && now.Sub(s.probeSent) > s.cfg.probeTimeout:
		return errProbeLost
	}
	return nil
}

// downErr returns an error wrapping backplane.ErrUnavailable while the
// shard's link to Redis is known to be down, and nil otherwise.
func (s *subscriber) downErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.downErrLocked()
}

func (s *subscriber) downErrLocked() error {
	if s.conn == nil && s.isDown {
		return fmt.Errorf("%w: %w", backplane.ErrUnavailable, s.lastErr)
	}
	return nil
}

// close ends the subscriber; run returns soon after.
func (s *subscriber) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.kickLocked(s.gen)
}
