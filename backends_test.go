package wshub

import (
	"crypto/rand"
	"encoding/hex"
	"testing"

	"github.com/alicebob/miniredis/v2"
	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub/backplane"
	wsredis "github.com/wshub/wshub/backplane/redis"
	"github.com/wshub/wshub/internal/redistest"
)

// clusterTests run on every backend: what the hub promises must not depend
// on which backplane carries it.
var clusterTests = []struct {
	name string
	run  func(t *testing.T, newCluster clusterMaker)
}{
	{"SendReachesEveryNodeOfTheUserAndNobodyElse", testSendReachesEveryNodeOfTheUserAndNobodyElse},
	{"MessagesArriveByteForByte", testMessagesArriveByteForByte},
	{"OrderPerPublisher", testOrderPerPublisher},
	{"BroadcastReachesExactlyTheTopicOnAllNodes", testBroadcastReachesExactlyTheTopicOnAllNodes},
	{"NodeHearsOnlyWhatItHolds", testNodeHearsOnlyWhatItHolds},
	{"ClusterJoinAndLeaveFromAnotherNode", testClusterJoinAndLeaveFromAnotherNode},
	{"DisconnectFromAnyNodeClosesAllSessions", testDisconnectFromAnyNodeClosesAllSessions},
	{"SendSessionAcrossNodes", testSendSessionAcrossNodes},
	{"EchoThroughOnMessage", testEchoThroughOnMessage},
	{"SlowClientDoesNotDelayOthers", testSlowClientDoesNotDelayOthers},
	{"MalformedBackplaneMessageIsCountedAndDropped", testMalformedBackplaneMessageIsCountedAndDropped},
	{"CloseLeavesAGivenBackplaneOpenAndUnsubscribed", testCloseLeavesAGivenBackplaneOpenAndUnsubscribed},
}

func runClusterTests(t *testing.T, newCluster clusterMaker) {
	for _, tc := range clusterTests {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, newCluster) })
	}
}

func TestClusterMemory(t *testing.T) {
	runClusterTests(t, newCluster)
}

func TestClusterMiniredis(t *testing.T) {
	runClusterTests(t, func(t *testing.T, n int, tweak func(int, *Options)) *cluster {
		mr := miniredis.RunT(t)
		return newRedisCluster(t, n, tweak, func() goredis.UniversalClient {
			return goredis.NewClient(&goredis.Options{Addr: mr.Addr()})
		})
	})
}

func TestClusterRedis(t *testing.T) {
	srv := redistest.Start(t)
	runClusterTests(t, func(t *testing.T, n int, tweak func(int, *Options)) *cluster {
		return newRedisCluster(t, n, tweak, func() goredis.UniversalClient {
			return goredis.NewClient(&goredis.Options{Addr: srv.Addr()})
		})
	})
}

func TestClusterRedisStreams(t *testing.T) {
	srv := redistest.Start(t)
	runClusterTests(t, func(t *testing.T, n int, tweak func(int, *Options)) *cluster {
		return newRedisClusterMode(t, n, tweak, wsredis.ModeStreams, func() goredis.UniversalClient {
			return goredis.NewClient(&goredis.Options{Addr: srv.Addr()})
		})
	})
}

func TestClusterRedisCluster(t *testing.T) {
	rc := redistest.StartCluster(t, 3)
	runClusterTests(t, func(t *testing.T, n int, tweak func(int, *Options)) *cluster {
		return newRedisCluster(t, n, tweak, func() goredis.UniversalClient {
			return goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: rc.Addrs()})
		})
	})
}

// newRedisCluster starts n hubs, each with its own Redis client from
// newClient, under a key prefix of their own.
func newRedisCluster(t *testing.T, n int, tweak func(int, *Options), newClient func() goredis.UniversalClient) *cluster {
	t.Helper()
	return newRedisClusterMode(t, n, tweak, wsredis.ModePubSub, newClient)
}

// newRedisClusterMode is newRedisCluster in the given mode.
func newRedisClusterMode(t *testing.T, n int, tweak func(int, *Options), mode wsredis.Mode, newClient func() goredis.UniversalClient) *cluster {
	t.Helper()
	prefix := "test-" + randomHex() + ":"
	return newClusterOn(t, n, tweak, func(t *testing.T, name string) (backplane.Backplane, func() uint64) {
		client := newClient()
		t.Cleanup(func() { _ = client.Close() }) // after the backplane's Close
		bp, err := wsredis.New(client, &wsredis.Options{Prefix: prefix, Logger: quiet, Mode: mode})
		require.NoError(t, err)
		return bp, func() uint64 { return bp.Stats().Received }
	})
}

func randomHex() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
