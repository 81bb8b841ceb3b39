package redis_test

import (
	"context"
	"errors"
	"net/url"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub/backplane"
	wsredis "github.com/wshub/wshub/backplane/redis"
)

var bg = context.Background()

func TestPublishFailsWhileRedisIsDown(t *testing.T) {
	mr := miniredis.RunT(t)
	client := goredis.NewClient(&goredis.Options{Addr: mr.Addr(), MaxRetries: -1})
	defer client.Close()
	bp, err := wsredis.NewPubSub(client, &wsredis.Options{Logger: quiet})
	require.NoError(t, err)
	defer bp.Close()
	require.NoError(t, bp.Start(func(backplane.Message) {}))
	require.NoError(t, bp.Publish(bg, "c", []byte("up")))

	mr.Close()
	err = bp.Publish(bg, "c", []byte("down"))
	require.ErrorIs(t, err, backplane.ErrUnavailable)
	assert.EqualValues(t, 1, bp.Stats().PublishErrors)
	assert.EqualValues(t, 1, bp.Stats().Published)

	ctx, cancel := context.WithTimeout(bg, 50*time.Millisecond)
	defer cancel()
	err = bp.Publish(ctx, "c", []byte("down"))
	assert.True(t, errors.Is(err, backplane.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded), "%v", err)
}

func TestNeverClosesTheGivenClient(t *testing.T) {
	mr := miniredis.RunT(t)
	client := goredis.NewClient(&goredis.Options{Addr: mr.Addr()})
	defer client.Close()
	bp, err := wsredis.NewPubSub(client, &wsredis.Options{Logger: quiet})
	require.NoError(t, err)
	require.NoError(t, bp.Start(func(backplane.Message) {}))
	require.NoError(t, bp.Subscribe(bg, "c"))
	require.Eventually(t, func() bool { return bp.Health() == nil }, 10*time.Second, time.Millisecond, "healthy once connected")
	require.NoError(t, bp.Close())
	require.NoError(t, bp.Close(), "Close again")
	require.NoError(t, client.Ping(bg).Err(), "the client was closed")
	require.ErrorIs(t, bp.Health(), backplane.ErrClosed)
}

func TestNewRejectsBadOptions(t *testing.T) {
	mr := miniredis.RunT(t)
	client := goredis.NewClient(&goredis.Options{Addr: mr.Addr()})
	defer client.Close()
	for name, o := range map[string]*wsredis.Options{
		"negative probe":  {ProbeInterval: -time.Second},
		"negative shards": {Shards: -1},
	} {
		_, err := wsredis.NewPubSub(client, o)
		assert.ErrorIs(t, err, wsredis.ErrInvalidOptions, name)
		_, err = wsredis.NewStreams(client, &wsredis.StreamsOptions{Options: *o})
		assert.ErrorIs(t, err, wsredis.ErrInvalidOptions, "streams: "+name)
	}
	for name, o := range map[string]*wsredis.StreamsOptions{
		"negative max len":        {MaxLen: -1},
		"negative max age":        {MaxAge: -time.Second},
		"epoch ttl below max age": {MaxAge: time.Hour, EpochTTL: time.Minute},
	} {
		_, err := wsredis.NewStreams(client, o)
		assert.ErrorIs(t, err, wsredis.ErrInvalidOptions, name)
	}
	_, err := wsredis.NewPubSub(nil, nil)
	assert.ErrorIs(t, err, wsredis.ErrInvalidOptions)
	_, err = wsredis.NewStreams(nil, nil)
	assert.ErrorIs(t, err, wsredis.ErrInvalidOptions)

	cluster := goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: []string{mr.Addr()}})
	defer cluster.Close()
	_, err = wsredis.NewPubSub(cluster, &wsredis.Options{Prefix: "app{1}:"})
	assert.ErrorIs(t, err, wsredis.ErrInvalidOptions, "a brace in a cluster prefix")
	_, err = wsredis.NewStreams(cluster, &wsredis.StreamsOptions{Options: wsredis.Options{Prefix: "app{1}:"}})
	assert.ErrorIs(t, err, wsredis.ErrInvalidOptions, "a brace in a cluster prefix, streams")
}

// Only a Streams keeps a log: the hub, which finds a backplane.Log by type
// assertion, is told so by the type, however the backplane was made.
func TestOnlyStreamsIsALog(t *testing.T) {
	mr := miniredis.RunT(t)
	client := goredis.NewClient(&goredis.Options{Addr: mr.Addr()})
	defer client.Close()
	p, err := wsredis.NewPubSub(client, nil)
	require.NoError(t, err)
	defer p.Close()
	s, err := wsredis.NewStreams(client, nil)
	require.NoError(t, err)
	defer s.Close()
	var bp backplane.Backplane = p
	_, isLog := bp.(backplane.Log)
	assert.False(t, isLog, "a PubSub is not a backplane.Log")
	bp = s
	_, isLog = bp.(backplane.Log)
	assert.True(t, isLog, "a Streams is a backplane.Log")

	ctx, cancel := context.WithTimeout(bg, 5*time.Second)
	defer cancel()
	for query, streams := range map[string]bool{"": false, "?mode=pubsub": false, "?mode=streams&max_len=10": true} {
		bp, err := backplane.Open(ctx, "redis://"+mr.Addr()+query)
		require.NoError(t, err, query)
		switch bp.(type) {
		case *wsredis.Streams:
			assert.True(t, streams, "%q opened a Streams", query)
		case *wsredis.PubSub:
			assert.False(t, streams, "%q opened a PubSub", query)
		default:
			t.Errorf("%q opened a %T", query, bp)
		}
		_, isLog := bp.(backplane.Log)
		assert.Equal(t, streams, isLog, "%q: a backplane.Log", query)
		require.NoError(t, bp.Close())
	}
}

func TestOpenURL(t *testing.T) {
	mr := miniredis.RunT(t)
	ctx, cancel := context.WithTimeout(bg, 5*time.Second)
	defer cancel()

	bp, err := backplane.Open(ctx, "redis://"+mr.Addr()+"/0?mode=pubsub&prefix=app1:&probe_interval=200ms&presence_ttl=300ms&pipelines=2&dial_timeout=1s")
	require.NoError(t, err)
	got := make(chan string, 1)
	require.NoError(t, bp.Start(func(m backplane.Message) { got <- m.Channel + "=" + string(m.Payload) }))
	require.NoError(t, bp.Subscribe(ctx, "u:x"))
	require.NoError(t, bp.Publish(ctx, "u:x", []byte("hi")))
	assert.Equal(t, "u:x=hi", <-got)
	chs := mr.PubSubChannels("app1:*")
	assert.Contains(t, chs, "app1:u:x", "the prefix is applied")
	require.NoError(t, bp.Close())

	for _, bad := range []string{
		"redis://" + mr.Addr() + "?mode=streamz",
		"redis://" + mr.Addr() + "?mode=pubsub&max_len=10",
		"redis://" + mr.Addr() + "?max_age=1m",
		"redis://" + mr.Addr() + "?mode=pubsub&epoch_ttl=1h",
		"redis://" + mr.Addr() + "?mode=streams&max_age=2h&epoch_ttl=1h",
		"redis://" + mr.Addr() + "?probe_interval=soon",
		"redis://" + mr.Addr() + "?presence_ttl=1ms", // below the least it takes
		"redis://" + mr.Addr() + "?shards=-3",
		"redis://" + mr.Addr() + "?no_such_option=1",
	} {
		_, err := backplane.Open(ctx, bad)
		assert.Error(t, err, bad)
	}
	_, err = backplane.Open(ctx, "redis://127.0.0.1:1/0?dial_timeout=100ms")
	assert.ErrorIs(t, err, backplane.ErrUnavailable, "nothing listens on port 1")

	mr.RequireAuth("secret")
	_, err = backplane.Open(ctx, "redis://"+mr.Addr())
	assert.Error(t, err, "wrong password")
	bp, err = backplane.Open(ctx, "redis://:secret@"+mr.Addr())
	require.NoError(t, err)
	require.NoError(t, bp.Close())
}

func TestSchemesAreRegistered(t *testing.T) {
	assert.Subset(t, backplane.Schemes(), []string{"redis", "rediss"})
	_, err := wsredis.Open(bg, &url.URL{Scheme: "redis", Host: "127.0.0.1:1", RawQuery: "cluster=maybe"}, backplane.OpenOptions{})
	assert.ErrorIs(t, err, wsredis.ErrInvalidOptions)
}
