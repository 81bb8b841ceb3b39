package wshub

import (
	"crypto/rand"
	"encoding/hex"
	"testing"

	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub/backplane"
	wsredis "github.com/wshub/wshub/backplane/redis"
)

// The hub-level cluster suite that every backend runs is
// wshubtest.RunHub, called from each backend's hubsuite_test.go.

// newRedisCluster starts n hubs, each with its own Redis client from
// newClient, under a key prefix of their own.
func newRedisCluster(t *testing.T, n int, tweak func(int, *Options), newClient func() goredis.UniversalClient) *cluster {
	t.Helper()
	return newRedisClusterMode(t, n, tweak, redisPubSub(wsredis.Options{}), newClient)
}

// newRedisClusterMode is newRedisCluster with backplanes made by mk.
func newRedisClusterMode(t *testing.T, n int, tweak func(int, *Options), mk redisBackplane, newClient func() goredis.UniversalClient) *cluster {
	t.Helper()
	prefix := "test-" + randomHex() + ":"
	return newClusterOn(t, n, tweak, func(t *testing.T, name string) (backplane.Backplane, func() uint64) {
		client := newClient()
		t.Cleanup(func() { _ = client.Close() }) // after the backplane's Close
		bp, received, err := mk(client, prefix)
		require.NoError(t, err)
		return bp, received
	})
}

// redisBackplane makes a Redis backplane on client under prefix, and
// returns it with a func that reads its Received counter.
type redisBackplane func(client goredis.UniversalClient, prefix string) (backplane.Backplane, func() uint64, error)

// redisPubSub makes wsredis.PubSub backplanes with o.
func redisPubSub(o wsredis.Options) redisBackplane {
	return func(client goredis.UniversalClient, prefix string) (backplane.Backplane, func() uint64, error) {
		opts := o
		opts.Prefix, opts.Logger = prefix, quiet
		bp, err := wsredis.NewPubSub(client, &opts)
		if err != nil {
			return nil, nil, err
		}
		return bp, func() uint64 { return bp.Stats().Received }, nil
	}
}

// redisPubSubAt makes wsredis.PubSub backplanes with o on the given
// prefix, whatever prefix the caller picked.
func redisPubSubAt(prefix string, o wsredis.Options) redisBackplane {
	mk := redisPubSub(o)
	return func(client goredis.UniversalClient, _ string) (backplane.Backplane, func() uint64, error) {
		return mk(client, prefix)
	}
}

// redisStreams makes wsredis.Streams backplanes with o.
func redisStreams(o wsredis.StreamsOptions) redisBackplane {
	return func(client goredis.UniversalClient, prefix string) (backplane.Backplane, func() uint64, error) {
		opts := o
		opts.Prefix, opts.Logger = prefix, quiet
		bp, err := wsredis.NewStreams(client, &opts)
		if err != nil {
			return nil, nil, err
		}
		return bp, func() uint64 { return bp.Stats().Received }, nil
	}
}

func randomHex() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
