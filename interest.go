package wshub

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/wshub/wshub/backplane"
)

// interest keeps the backplane's subscriptions equal to what this node holds.
// The registry tells it when a channel gains its first holder and loses its
// last (it implements transitions); one goroutine turns the changes into
// batched Subscribe and Unsubscribe calls. Dropping never blocks; wanting
// returns a flush to wait on when the channel is not yet subscribed.
type interest struct {
	bp      backplane.Backplane
	log     *slog.Logger
	timeout time.Duration

	failing bool // the last batch failed; only the run goroutine uses it

	mu    sync.Mutex
	chans map[string]*chanState
	dirty map[string]struct{}
	next  *flush // waiters for the next batch
	kick  chan struct{}
	stop  chan struct{}
	done  chan struct{}

	// ctx bounds every backplane call; close cancels it so that a hung
	// backplane cannot hold up a forced Hub.Close.
	ctx    context.Context
	cancel context.CancelFunc
}

var _ transitions = (*interest)(nil)

type chanState struct {
	wanted     bool // the node holds the channel
	subscribed bool // as of the last completed backplane call
	dirty      bool // in interest.dirty, waiting for a batch
	inflight   bool // in the batch being applied now
}

// flush is one batch; waiters block on done and then read err.
type flush struct {
	done chan struct{}
	err  error
}

// retryDelay spaces out retries of a failed batch.
const retryDelay = time.Second

func newInterest(bp backplane.Backplane, log *slog.Logger, timeout time.Duration) *interest {
	im := &interest{
		bp:      bp,
		log:     log,
		timeout: timeout,
		chans:   make(map[string]*chanState),
		dirty:   make(map[string]struct{}),
		kick:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	im.ctx, im.cancel = context.WithCancel(context.Background())
	go im.run()
	return im
}

// first marks channel wanted. It returns nil when the channel is already
// subscribed, or the flush that will subscribe it.
func (im *interest) first(channel string) *flush {
	im.mu.Lock()
	defer im.mu.Unlock()
	st := im.chans[channel]
	if st == nil {
		st = &chanState{}
		im.chans[channel] = st
	}
	st.wanted = true
	return im.readyLocked(channel, st)
}

// ready returns nil when channel is subscribed, or the flush to wait for.
func (im *interest) ready(channel string) *flush {
	im.mu.Lock()
	defer im.mu.Unlock()
	st := im.chans[channel]
	if st == nil {
		st = &chanState{}
		im.chans[channel] = st
	}
	return im.readyLocked(channel, st)
}

func (im *interest) readyLocked(channel string, st *chanState) *flush {
	if st.subscribed && !st.dirty && !st.inflight {
		return nil
	}
	im.markLocked(channel, st)
	if im.next == nil {
		im.next = &flush{done: make(chan struct{})}
	}
	return im.next
}

// last marks channel no longer wanted, which unsubscribes it.
func (im *interest) last(channel string) {
	im.mu.Lock()
	defer im.mu.Unlock()
	st := im.chans[channel]
	if st == nil || !st.wanted {
		return
	}
	st.wanted = false
	im.markLocked(channel, st)
}

func (im *interest) markLocked(channel string, st *chanState) {
	im.markQuietLocked(channel, st)
	select {
	case im.kick <- struct{}{}:
	default:
	}
}

// markQuietLocked queues channel for a later batch without waking the
// goroutine: the retry timer picks it up.
func (im *interest) markQuietLocked(channel string, st *chanState) {
	if !st.dirty {
		st.dirty = true
		im.dirty[channel] = struct{}{}
	}
}

// wait blocks until f is applied or ctx ends. A nil f is already done.
func (f *flush) wait(ctx context.Context) error {
	if f == nil {
		return nil
	}
	select {
	case <-f.done:
		return f.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (im *interest) run() {
	defer close(im.done)
	retry := time.NewTimer(retryDelay)
	retry.Stop()
	defer retry.Stop()
	for {
		select {
		case <-im.stop:
			return
		case <-im.kick:
		case <-retry.C:
		}
		if im.apply() {
			retry.Reset(retryDelay)
		}
	}
}

// apply sends one batch to the backplane and reports whether it failed.
func (im *interest) apply() (failed bool) {
	im.mu.Lock()
	var subs, unsubs []string
	for ch := range im.dirty {
		st := im.chans[ch]
		st.dirty = false
		want := st.wanted
		switch {
		case want && !st.subscribed:
			st.inflight = true
			subs = append(subs, ch)
		case !want && st.subscribed:
			st.inflight = true
			unsubs = append(unsubs, ch)
		case !want:
			delete(im.chans, ch)
		}
	}
	clear(im.dirty)
	f := im.next
	im.next = nil
	im.mu.Unlock()

	ctx, cancel := context.WithTimeout(im.ctx, im.timeout)
	var errU, errS error
	if len(unsubs) > 0 {
		errU = im.bp.Unsubscribe(ctx, unsubs...)
	}
	if len(subs) > 0 {
		errS = im.bp.Subscribe(ctx, subs...)
	}
	cancel()
	if (errU != nil || errS != nil) && im.ctx.Err() == nil {
		// The first failure of an outage at Warn, its retries at Debug.
		level := slog.LevelWarn
		if im.failing {
			level = slog.LevelDebug
		}
		im.failing = true
		im.log.Log(im.ctx, level, "wshub: backplane subscription failed, will retry",
			"subscribe", len(subs), "unsubscribe", len(unsubs), "subscribe_err", errS, "unsubscribe_err", errU)
	} else if errU == nil && errS == nil {
		im.failing = false
	}

	im.mu.Lock()
	settle := func(chs []string, err error, subscribed bool) {
		for _, ch := range chs {
			st := im.chans[ch]
			st.inflight = false
			if err == nil {
				st.subscribed = subscribed
			} else if st.wanted != st.subscribed {
				im.markQuietLocked(ch, st)
			}
			if !st.wanted && !st.subscribed && !st.dirty {
				delete(im.chans, ch)
			}
		}
	}
	settle(unsubs, errU, false)
	settle(subs, errS, true)
	im.mu.Unlock()

	if f != nil {
		f.err = errS
		close(f.done)
	}
	return errU != nil || errS != nil
}

// subscribed returns the channels the backplane holds for this node.
func (im *interest) subscribed() []string {
	im.mu.Lock()
	defer im.mu.Unlock()
	var chs []string
	for ch, st := range im.chans {
		if st.subscribed || st.inflight {
			chs = append(chs, ch)
		}
	}
	return chs
}

// close stops the goroutine and waits for it; waiters of a pending batch get
// ErrClosed.
func (im *interest) close() {
	close(im.stop)
	im.cancel()
	<-im.done
	im.mu.Lock()
	f := im.next
	im.next = nil
	im.mu.Unlock()
	if f != nil {
		f.err = ErrClosed
		close(f.done)
	}
}
