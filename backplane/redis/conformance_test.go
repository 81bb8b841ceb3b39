package redis_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	goredis "github.com/redis/go-redis/v9"

	"github.com/wshub/wshub/backplane"
	"github.com/wshub/wshub/backplane/backplanetest"
	wsredis "github.com/wshub/wshub/backplane/redis"
	"github.com/wshub/wshub/internal/redistest"
)

func TestConformanceMiniredis(t *testing.T) {
	backplanetest.Run(t, func(ctx context.Context, t *testing.T) (backplanetest.Harness, error) {
		mr, err := miniredis.Run()
		if err != nil {
			return nil, err
		}
		return &harness{addr: mr.Addr(), stop: mr.Close}, nil
	}, pubsubFeatures)
}

// harness makes nodes that each have their own client to one Redis, under
// a prefix of their own.
type harness struct {
	addr    string
	cluster []string
	stop    func()
	prefix  string
	streams bool // Streams nodes, PubSub ones otherwise
	maxLen  int  // StreamsOptions.MaxLen; 0 for the default

	mu      sync.Mutex
	clients []goredis.UniversalClient
}

func (h *harness) MakeNode(context.Context) (backplane.Backplane, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.prefix == "" {
		h.prefix = "t" + randomHex() + ":"
	}
	var c goredis.UniversalClient
	if h.cluster != nil {
		c = goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: h.cluster})
	} else {
		c = goredis.NewClient(&goredis.Options{Addr: h.addr})
	}
	h.clients = append(h.clients, c)
	o := wsredis.Options{Prefix: h.prefix, Logger: quiet, PresenceTTL: conformancePresenceTTL}
	if h.streams {
		return wsredis.NewStreams(c, &wsredis.StreamsOptions{Options: o, MaxLen: h.maxLen})
	}
	return wsredis.NewPubSub(c, &o)
}

func (h *harness) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, c := range h.clients {
		_ = c.Close()
	}
	if h.stop != nil {
		h.stop()
	}
}

// conformancePresenceTTL is the PresenceTTL of the harnesses' nodes: short,
// so that the Presence cases see an instance expire within seconds.
const conformancePresenceTTL = 1500 * time.Millisecond

// pubsubFeatures are what PubSub promises: the core contract and presence.
var pubsubFeatures = backplanetest.Features{Presence: true, PresenceTTL: conformancePresenceTTL}

func randomHex() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func TestConformanceRedis(t *testing.T) {
	srv := redistest.Start(t)
	backplanetest.Run(t, func(ctx context.Context, t *testing.T) (backplanetest.Harness, error) {
		return &harness{addr: srv.Addr()}, nil
	}, pubsubFeatures)
}

func TestConformanceRedisCluster(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	backplanetest.Run(t, func(ctx context.Context, t *testing.T) (backplanetest.Harness, error) {
		return &harness{cluster: c.Addrs()}, nil
	}, pubsubFeatures)
}

// streamsMaxLen is the MaxLen of the Streams harnesses: small, so that the
// Replay cases overrun it with few messages (20 × 10 + 200).
const streamsMaxLen = 10

// streamsFeatures are what Streams promises: replay by offset, keeping
// at least MaxLen messages per channel, and presence.
var streamsFeatures = backplanetest.Features{Replay: true, Retained: streamsMaxLen,
	Presence: true, PresenceTTL: conformancePresenceTTL}

func TestConformanceStreamsMiniredis(t *testing.T) {
	backplanetest.Run(t, func(ctx context.Context, t *testing.T) (backplanetest.Harness, error) {
		mr, err := miniredis.Run()
		if err != nil {
			return nil, err
		}
		return &harness{addr: mr.Addr(), stop: mr.Close, streams: true, maxLen: streamsMaxLen}, nil
	}, streamsFeatures)
}

func TestConformanceStreamsRedis(t *testing.T) {
	srv := redistest.Start(t)
	backplanetest.Run(t, func(ctx context.Context, t *testing.T) (backplanetest.Harness, error) {
		return &harness{addr: srv.Addr(), streams: true, maxLen: streamsMaxLen}, nil
	}, streamsFeatures)
}

func TestConformanceStreamsRedisCluster(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	backplanetest.Run(t, func(ctx context.Context, t *testing.T) (backplanetest.Harness, error) {
		return &harness{cluster: c.Addrs(), streams: true, maxLen: streamsMaxLen}, nil
	}, streamsFeatures)
}
