package main

import (
	"context"

	"github.com/wshub/wshub"
)

// runBroadcast: every client joins one topic in OnConnect; node 1
// broadcasts -msgs messages to it. lost = msgs*conns - delivered.
func runBroadcast(ctx context.Context, e *env) (result, error) {
	hubs, err := e.setUpHubs(ctx, e.cfg.conns)
	if err != nil {
		return result{}, err
	}
	return e.traffic(ctx, traffic{
		send:    e.broadcaster(hubs.hubs[0]),
		expect:  int64(e.cfg.msgs) * int64(e.cfg.conns),
		rate:    e.cfg.rate,
		callers: 1,
	})
}

// broadcaster returns a send that broadcasts each payload to the topic
// from hub.
func (e *env) broadcaster(hub *wshub.Hub) func(context.Context, []byte) error {
	topic, typ := e.topic(), wshub.MessageType(e.msgType())
	return func(ctx context.Context, p []byte) error {
		return hub.Broadcast(ctx, topic, wshub.Message{Type: typ, Data: p})
	}
}
