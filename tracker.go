package wshub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wshub/wshub/backplane"
)

// tracker keeps this node's entries in the backplane's presence record
// equal to what the node holds: for each user, its sessions here (key
// "u:<user>", member the user) and, for each topic, the sessions of each
// user in it (key "t:<topic>", member the user). The registry tells it of
// every change under its own lock (count); one goroutine writes the
// changes in batches, refreshes the node's instance, starts a new one when
// the backplane reports it lost (writing every entry again), and turns
// what changed cluster-wide into presence events.
type tracker struct {
	p      backplane.Presence
	log    *slog.Logger
	node   string
	events func([]backplane.PresenceChange) // called from the events goroutine, in order

	mu       sync.Mutex
	counts   map[presenceKey]int // sessions here, by key and member
	dirty    dirtyKeys
	held     map[presenceKey]int // keys a reserve is pending for: not written by the goroutine
	seq      uint64              // changes counted so far
	inflight uint64              // the oldest change of the write in flight; 0 when none
	// unreachable is the last change counted when a refresh of the
	// instance failed: the changes up to it were tried (they cannot be
	// written now, and are retried), so nobody waits for them.
	unreachable uint64
	barriers    []barrier // waiting for changes to be tried, oldest first
	instance    string    // "<node>.<suffix>"; empty until the first write
	lease       time.Time // when to refresh the instance at the latest

	// wmu serializes the backplane writes of the instance: the
	// goroutine's batches and reserve.
	wmu sync.Mutex

	// failing is set while the goroutine's writes or refreshes fail.
	failing atomic.Bool

	// Changes go to their own goroutine, so that slow hooks (a presence
	// message's Broadcast) never hold up writes or upgrades.
	queue      []backplane.PresenceChange // guarded by mu
	queued     chan struct{}              // signalled when queue grows
	eventsDone chan struct{}

	kick chan struct{}
	stop chan struct{}
	done chan struct{}
	ctx  context.Context // ends on close; bounds every call
	end  context.CancelFunc
}

type presenceKey struct{ key, member string }

// barrier is closed once every change up to n was tried.
type barrier struct {
	n  uint64
	ch chan struct{}
}

// Bounds of the tracker's work.
const (
	presenceBatch = 512             // updates per UpdatePresence call
	presenceRetry = time.Second     // after a failed call
	presenceCall  = 5 * time.Second // bound of one call
)

func newTracker(p backplane.Presence, log *slog.Logger, node string, events func([]backplane.PresenceChange)) *tracker {
	t := &tracker{
		p:      p,
		log:    log,
		node:   node,
		events: events,
		counts: make(map[presenceKey]int),
		dirty:  newDirtyKeys(),
		held:   make(map[presenceKey]int),
		kick:   make(chan struct{}, 1),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
		queued: make(chan struct{}, 1),

		eventsDone: make(chan struct{}),
	}
	t.ctx, t.end = context.WithCancel(context.Background())
	t.kick <- struct{}{} // register the instance at once
	go t.run()
	go t.deliverEvents()
	return t
}

// emit queues changes for the events goroutine.
func (t *tracker) emit(changes []backplane.PresenceChange) {
	if len(changes) == 0 {
		return
	}
	t.mu.Lock()
	t.queue = append(t.queue, changes...)
	t.mu.Unlock()
	select {
	case t.queued <- struct{}{}:
	default:
	}
}

// deliverEvents hands queued changes to events, in order, until close;
// what is queued when close comes is delivered first.
func (t *tracker) deliverEvents() {
	defer close(t.eventsDone)
	for {
		stopping := false
		select {
		case <-t.queued:
		case <-t.done: // the writer has stopped: nothing more comes
			stopping = true
		}
		t.mu.Lock()
		batch := t.queue
		t.queue = nil
		t.mu.Unlock()
		if len(batch) > 0 {
			t.events(batch)
		}
		if stopping {
			return
		}
	}
}

// count adds delta to the sessions of member in key. It never blocks: the
// registry calls it under its lock. With hold, the key is held until
// release: the goroutine does not write it, so that the reserve of a new
// session is the write that checks its limit.
func (t *tracker) count(key, member string, delta int, hold bool) {
	k := presenceKey{key, member}
	t.mu.Lock()
	if hold {
		t.held[k]++
	}
	t.seq++
	n := t.counts[k] + delta
	if n <= 0 {
		delete(t.counts, k)
	} else {
		t.counts[k] = n
	}
	t.dirty.add(k, t.seq)
	t.mu.Unlock()
	t.wake()
}

// tried returns a channel closed once every change counted so far has
// been tried, written or not (a failed write is retried later), or the
// tracker closed: what a new session waits for before its handshake
// completes, so that other nodes count it from then on.
func (t *tracker) tried() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	ch := make(chan struct{})
	if t.triedUpToLocked() >= t.seq {
		close(ch)
		return ch
	}
	t.barriers = append(t.barriers, barrier{t.seq, ch})
	return ch
}

// triedUpToLocked returns the last change up to which every change was
// tried.
func (t *tracker) triedUpToLocked() uint64 {
	upTo := t.seq
	if n, ok := t.dirty.oldest(); ok {
		upTo = n - 1
	}
	if t.inflight != 0 {
		upTo = min(upTo, t.inflight-1)
	}
	return max(upTo, t.unreachable)
}

// refreshFailed records that the record could not be reached, releasing
// whoever waits for the changes counted so far (they stay dirty, to be
// written once it can be).
func (t *tracker) refreshFailed() {
	t.mu.Lock()
	t.unreachable = t.seq
	t.releaseLocked()
	t.mu.Unlock()
}

// releaseLocked closes the barriers that every tried change passed.
func (t *tracker) releaseLocked() {
	upTo := t.triedUpToLocked()
	i := 0
	for ; i < len(t.barriers) && t.barriers[i].n <= upTo; i++ {
		close(t.barriers[i].ch)
	}
	t.barriers = append(t.barriers[:0], t.barriers[i:]...)
}

// retryLocked puts k back to be written again, as a new change.
func (t *tracker) retryLocked(k presenceKey) {
	t.seq++
	t.dirty.add(k, t.seq)
}

func (t *tracker) wake() {
	select {
	case t.kick <- struct{}{}:
	default:
	}
}

// release ends a hold that count took for user's key.
func (t *tracker) release(user string) {
	k := presenceKey{userPrefix + user, user}
	t.mu.Lock()
	if t.held[k]--; t.held[k] <= 0 {
		delete(t.held, k)
	}
	t.mu.Unlock()
	t.wake()
}

// reserve writes the user's sessions here at once, refused if it would
// take the user over limit sessions across the cluster: it returns an
// error wrapping backplane.ErrOverLimit then, and another error when the
// record cannot be reached, which the caller may ignore (the write is
// retried by the goroutine).
func (t *tracker) reserve(ctx context.Context, user string, limit int) error {
	k := presenceKey{userPrefix + user, user}
	t.wmu.Lock()
	defer t.wmu.Unlock()
	inst, err := t.ensureInstance(ctx)
	if err != nil {
		t.refreshFailed()
		return err
	}
	t.mu.Lock()
	n := t.counts[k]
	t.inflight = t.dirty.remove(k)
	t.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, presenceCall)
	defer cancel()
	changes, err := t.p.UpdatePresence(ctx, inst, []backplane.PresenceUpdate{{Key: k.key, Member: user, Sessions: n, Limit: limit}})
	t.mu.Lock()
	if err != nil && !errors.Is(err, backplane.ErrOverLimit) {
		t.retryLocked(k)
	}
	t.inflight = 0
	t.releaseLocked()
	t.mu.Unlock()
	t.emit(changes)
	return err
}

// ensureInstance returns the node's instance, registering a new one first
// when there is none or the backplane lost it. wmu is held.
func (t *tracker) ensureInstance(ctx context.Context) (string, error) {
	t.mu.Lock()
	inst, lease := t.instance, t.lease
	t.mu.Unlock()
	if inst != "" && time.Now().Before(lease) {
		return inst, nil
	}
	return t.refresh(ctx)
}

// refresh refreshes the node's instance, or registers a new one, and
// returns it. When the backplane reports the instance lost, every entry
// is written again under a new one. wmu is held.
func (t *tracker) refresh(ctx context.Context) (string, error) {
	t.mu.Lock()
	inst := t.instance
	t.mu.Unlock()
	for range 2 {
		fresh := inst == ""
		if fresh {
			inst = t.node + "." + randomSuffix()[1:]
		}
		cctx, cancel := context.WithTimeout(ctx, presenceCall)
		r, err := t.p.RefreshPresence(cctx, inst)
		cancel()
		if err != nil {
			return "", err
		}
		t.emit(r.Changes)
		if r.Lost {
			t.log.Warn("wshub: presence of this node was lost (taken for dead, or the store lost it); writing it again")
			inst = ""
			continue
		}
		next := r.Next
		if next <= 0 {
			next = 10 * time.Millisecond
		}
		t.mu.Lock()
		if fresh {
			// Everything this node holds goes to the new instance.
			for k := range t.counts {
				t.retryLocked(k)
			}
		}
		t.instance, t.lease = inst, time.Now().Add(next)
		t.mu.Unlock()
		return inst, nil
	}
	return "", fmt.Errorf("wshub: presence: a new instance was lost at once: %w", backplane.ErrUnavailable)
}

func (t *tracker) run() {
	defer close(t.done)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-t.stop:
			return
		case <-t.kick:
		case <-timer.C:
		}
		wait, err := t.step()
		if err != nil && t.ctx.Err() == nil {
			if !t.failing.Swap(true) {
				t.log.Warn("wshub: presence cannot be written, will retry", "err", err)
			}
			wait = presenceRetry
		} else if err == nil && t.failing.Swap(false) {
			t.log.Info("wshub: presence written again")
		}
		if wait > 0 {
			timer.Reset(wait)
		}
	}
}

// step refreshes the instance when its lease is due and writes what is
// dirty. It returns when to step again. Every node refreshes, one that
// holds no session too: refreshes are what removes dead nodes' entries,
// so a cluster whose only live node sends without serving still cleans
// up.
func (t *tracker) step() (time.Duration, error) {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	t.mu.Lock()
	due := t.instance == "" || !time.Now().Before(t.lease)
	t.mu.Unlock()
	if due {
		if _, err := t.refresh(t.ctx); err != nil {
			t.refreshFailed()
			return 0, err
		}
	}
	for {
		more, err := t.writeBatch()
		if err != nil {
			return 0, err
		}
		if !more {
			break
		}
	}
	t.mu.Lock()
	wait := time.Until(t.lease)
	t.mu.Unlock()
	return max(wait, time.Millisecond), nil
}

// writeBatch writes up to presenceBatch dirty entries and reports whether
// more are dirty. wmu is held.
func (t *tracker) writeBatch() (more bool, err error) {
	t.mu.Lock()
	inst := t.instance
	// Oldest change first, so that a user's entries and the events they
	// cause keep the order of what happened on this node.
	keys, first, more := t.dirty.take(presenceBatch, func(k presenceKey) bool { return t.held[k] > 0 })
	if len(keys) == 0 {
		t.mu.Unlock()
		return false, nil
	}
	t.inflight = first
	ups := make([]backplane.PresenceUpdate, len(keys))
	for i, k := range keys {
		ups[i] = backplane.PresenceUpdate{Key: k.key, Member: k.member, Sessions: t.counts[k]}
	}
	t.mu.Unlock()

	ctx, cancel := context.WithTimeout(t.ctx, presenceCall)
	changes, err := t.p.UpdatePresence(ctx, inst, ups)
	cancel()
	t.emit(changes)
	failed := err != nil && !errors.Is(err, backplane.ErrOverLimit)
	t.mu.Lock()
	if failed {
		for _, k := range keys {
			t.retryLocked(k) // written again later, with the count of then
		}
	}
	t.inflight = 0
	t.releaseLocked()
	if failed && errors.Is(err, backplane.ErrUnavailable) {
		t.lease = time.Time{} // the lease may be why: refresh first
	}
	t.mu.Unlock()
	if failed {
		return false, err
	}
	return more, nil
}

// close writes what is dirty within ctx (the node's sessions are gone by
// now, so that is their removal) and stops the goroutine.
func (t *tracker) close(ctx context.Context) {
	if ctx.Err() == nil {
		stop := context.AfterFunc(ctx, t.end)
		t.wmu.Lock()
		t.mu.Lock()
		live := t.instance != "" && t.dirty.len() > 0
		t.mu.Unlock()
		if live {
			for {
				more, err := t.writeBatch()
				if err != nil || !more {
					break
				}
			}
		}
		t.wmu.Unlock()
		stop()
	}
	t.end()
	close(t.stop)
	<-t.done
	<-t.eventsDone
	t.mu.Lock()
	for _, b := range t.barriers {
		close(b.ch)
	}
	t.barriers = nil
	t.mu.Unlock()
}

// dirtyKeys is the set of keys to write, in the order they changed, each
// with the number of the change that made it dirty.
type dirtyKeys struct {
	order []presenceKey // oldest first; may hold keys no longer in set, skipped
	set   map[presenceKey]uint64
}

func newDirtyKeys() dirtyKeys { return dirtyKeys{set: make(map[presenceKey]uint64)} }

func (d *dirtyKeys) len() int { return len(d.set) }

// add makes k dirty as of change n, unless it is dirty already.
func (d *dirtyKeys) add(k presenceKey, n uint64) {
	if _, ok := d.set[k]; !ok {
		d.set[k] = n
		d.order = append(d.order, k)
	}
}

// remove makes k clean and returns the change that made it dirty, 0 if
// it was not.
func (d *dirtyKeys) remove(k presenceKey) uint64 {
	n := d.set[k]
	delete(d.set, k)
	return n
}

// oldest returns the change that made the oldest dirty key dirty.
func (d *dirtyKeys) oldest() (uint64, bool) {
	for len(d.order) > 0 {
		if n, ok := d.set[d.order[0]]; ok {
			return n, true
		}
		d.order[0] = presenceKey{}
		d.order = d.order[1:] // removed since
	}
	return 0, false
}

// take removes and returns up to n keys, oldest first, leaving those skip
// reports in place. It also returns the change of the first key taken
// and whether keys that skip does not hold remain.
func (d *dirtyKeys) take(n int, skip func(presenceKey) bool) (keys []presenceKey, first uint64, more bool) {
	kept := make([]presenceKey, 0, len(d.order))
	for _, k := range d.order {
		c, ok := d.set[k]
		if !ok {
			continue // removed since
		}
		if len(keys) < n && !skip(k) {
			if len(keys) == 0 {
				first = c
			}
			keys = append(keys, k)
			delete(d.set, k)
			continue
		}
		if !skip(k) {
			more = true
		}
		kept = append(kept, k)
	}
	d.order = kept
	return keys, first, more
}

// entries returns how many entries this node holds in the record: users
// here, plus each user's topics.
func (t *tracker) entries() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.counts)
}

// nodeOfInstance returns the node ID of a presence instance.
func nodeOfInstance(inst string) string {
	if i := strings.LastIndexByte(inst, '.'); i >= 0 {
		return inst[:i]
	}
	return inst
}
