package redis

import (
	"context"

	goredis "github.com/redis/go-redis/v9"

	"github.com/wshub/wshub/backplane"
)

// PubSub is a wshub backplane on Redis pub/sub: lowest latency,
// at-most-once. Messages published while a node is cut off from Redis are
// lost to that node, and the loss is reported as an Event with Gap set. It
// keeps no log, so it is not a backplane.Log: for that, see Streams.
//
// Make one per node with NewPubSub, or with backplane.Open and a redis://
// URL. With a *goredis.ClusterClient it uses sharded pub/sub (SSUBSCRIBE
// and SPUBLISH, Redis 7 or later), so that each message is handled only by
// the master that owns its channel's slot.
type PubSub struct {
	core
}

var (
	_ backplane.Backplane = (*PubSub)(nil)
	_ backplane.Notifier  = (*PubSub)(nil)
	_ backplane.Checker   = (*PubSub)(nil)
)

// NewPubSub returns a pub/sub backplane on client. It does no I/O: the
// connections are made by Start and Subscribe. opts may be nil for all
// defaults.
//
// Neither NewPubSub nor Close ever closes client: the caller owns it and
// closes it after the backplane.
func NewPubSub(client goredis.UniversalClient, opts *Options) (*PubSub, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	p := &PubSub{}
	if err := p.core.init(client, o, p, nil); err != nil {
		return nil, err
	}
	return p, nil
}

// Stats returns the backplane's counters.
func (p *PubSub) Stats() Stats {
	return p.commonStats()
}

// send publishes payload on rc with a plain (S)PUBLISH.
func (p *PubSub) send(ctx context.Context, _, rc string, payload []byte) error {
	return p.pub.publishPlain(ctx, rc, payload)
}

// shardHooks returns the hooks of a shard: every message is delivered as
// it comes, and nothing is caught up.
func (p *PubSub) shardHooks(pre string) shardMode {
	return pubsubShard{c: &p.core, prefix: pre}
}

// tick does nothing: PubSub needs no clock.
func (p *PubSub) tick(context.Context) {}

// pubsubShard is what a PubSub subscriber does for its shard.
type pubsubShard struct {
	c      *core
	prefix string // the shard's
}

func (h pubsubShard) prepare(context.Context, []string) (func(string), error) {
	return holdNothing, nil
}

// holdNothing is the hold of a shard that keeps nothing per channel.
func holdNothing(string) {}

func (h pubsubShard) drop(string) {}

func (h pubsubShard) message(name string, payload []byte, _ bool) {
	h.c.deliver(h.prefix, name, "", payload)
}

func (h pubsubShard) up(gap bool, _ func()) bool {
	return gap
}
