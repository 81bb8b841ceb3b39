package main

import (
	"context"
	"math/rand/v2"
	"strconv"

	"github.com/wshub/wshub"
)

// runSendUser: every client is a distinct user; node 1 sends -msgs
// messages to random users from -callers goroutines. lost = msgs -
// delivered.
func runSendUser(ctx context.Context, e *env) (result, error) {
	hubs, err := e.setUpHubs(ctx, e.cfg.conns)
	if err != nil {
		return result{}, err
	}
	hub, prefix, n := hubs.hubs[0], e.userPrefix(), e.cfg.conns
	typ := wshub.MessageType(e.msgType())
	return e.traffic(ctx, traffic{
		send: func(ctx context.Context, p []byte) error {
			return hub.Send(ctx, prefix+strconv.Itoa(rand.IntN(n)), wshub.Message{Type: typ, Data: p})
		},
		expect:  int64(e.cfg.msgs),
		rate:    e.cfg.rate,
		callers: e.cfg.callers,
	})
}
