package main

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// churner connects clients at a rate, each living a random time around a
// mean, and has each one leave and rejoin the topic in between. The connect
// rate is exact (as long as handshakes keep up); with the mean life set to
// slots/rate, about slots churners are connected at any time.
type churner struct {
	stop     chan struct{}
	wg       sync.WaitGroup
	active   atomic.Int64
	seq      atomic.Int64
	connects atomic.Int64
	discon   atomic.Int64
	errs     tally
	skipped  atomic.Int64 // connects not made: twice the slots were alive
}

func (cs *clientSet) startChurn(ctx context.Context, r request) error {
	if len(r.URLs) == 0 || r.N <= 0 || r.Rate <= 0 {
		return errors.New("churn-start: need urls, slots and a rate")
	}
	cs.mu.Lock()
	if cs.churn != nil {
		cs.mu.Unlock()
		return errors.New("churn-start: already churning")
	}
	if cs.epoch == 0 {
		cs.configure(r)
	}
	ch := &churner{stop: make(chan struct{})}
	cs.churn = ch
	cs.mu.Unlock()

	ch.wg.Add(1)
	go func() {
		defer ch.wg.Done()
		cs.churnLoop(ctx, ch, r)
	}()
	return nil
}

// churnLoop starts a churner every 1/r.Rate seconds until ch stops, unless
// twice r.N are alive.
func (cs *clientSet) churnLoop(ctx context.Context, ch *churner, r request) {
	// Closed connections linger in TIME_WAIT for a minute, holding their
	// source port: give churners enough source addresses of their own.
	addrs := 1 + int(r.Rate*70)/max(r.PerAddr, 1)
	limit := int64(2 * r.N)
	interval := time.Duration(float64(time.Second) / r.Rate)
	next := time.Now()
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ch.stop:
			return
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		for ; !next.After(now); next = next.Add(interval) {
			if ch.active.Load() >= limit {
				ch.skipped.Add(1)
				continue
			}
			seq := ch.seq.Add(1)
			ch.active.Add(1)
			ch.wg.Add(1)
			go func() {
				defer ch.wg.Done()
				defer ch.active.Add(-1)
				cs.churnOne(ctx, ch, r, seq, r.AddrBase+int(seq)%addrs)
			}()
		}
		t.Reset(next.Sub(now))
	}
}

// churnOne is one churner: connect (the server joins the topic in
// OnConnect), live, close with a close handshake.
func (cs *clientSet) churnOne(ctx context.Context, ch *churner, r request, seq int64, addr int) {
	conn, err := cs.dial(ctx, addr, cs.clientURL(r, int(seq)))
	if err != nil {
		select {
		case <-ch.stop: // cut short by the end of the run
		default:
			ch.errs.add(err)
		}
		return
	}
	ch.connects.Add(1)
	c := cs.startReader(int(seq), conn, true)
	life := time.Duration(float64(r.LifeNS) * (0.5 + rand.Float64()))
	if err := ch.live(ctx, c, seq, life); err != nil {
		ch.errs.add(err)
	}
	c.closing.Store(true)
	_ = conn.Close(websocket.StatusNormalClosure, "churn")
	<-c.done
	ch.discon.Add(1)
}

// live is the life of churner c, number seq: leave the topic at a third of
// life, join at two thirds, end at its end, or before when the churn stops
// or c is closed. Even ones ask the session to leave and join ("leave",
// "join"), odd ones ask for the cluster-wide Hub.Leave and Hub.Join of
// their user ("hub-leave", "hub-join").
func (ch *churner) live(ctx context.Context, c *client, seq int64, life time.Duration) error {
	leave, join := []byte("leave"), []byte("join")
	if seq%2 == 1 {
		leave, join = []byte("hub-leave"), []byte("hub-join")
	}
	timer := time.NewTimer(life / 3)
	defer timer.Stop()
	for _, msg := range [][]byte{leave, join, nil} {
		select {
		case <-ch.stop:
			return nil
		case <-ctx.Done():
			return nil
		case <-c.done:
			return nil
		case <-timer.C:
		}
		if msg != nil {
			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := c.conn.Write(wctx, websocket.MessageText, msg)
			cancel()
			if err != nil {
				return err
			}
		}
		timer.Reset(life / 3)
	}
	return nil
}

func (cs *clientSet) stopChurn() reply {
	cs.mu.Lock()
	ch := cs.churn
	cs.churn = nil
	cs.mu.Unlock()
	if ch == nil {
		return reply{Err: "churn-stop: not churning"}
	}
	close(ch.stop)
	ch.wg.Wait()
	rep := reply{Connects: ch.connects.Load(), Disconnects: ch.discon.Load(), Errors: ch.errs.count(), Skipped: ch.skipped.Load()}
	if err := ch.errs.firstErr(); err != nil {
		rep.FirstError = err.Error()
	}
	return rep
}
