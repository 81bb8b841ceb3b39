package redis

import (
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"

	"github.com/wshub/wshub/backplane"
)

// naming maps wshub channels to shards and to the names of their Redis
// channels and keys.
//
// Every name starts with the shard's prefix: Options.Prefix, followed with
// a cluster by the hash tag "{<shard>}", so that everything of one shard
// lives in one slot. A wshub channel c of shard prefix pre is the Redis
// channel pre+c; a Streams keeps its log in pre+"log:"+c and its epoch in
// pre+"epoch:"+c; a node's probes travel on pre+"probe:"+id.
type naming struct {
	prefix  string // Options.Prefix
	sharded bool   // a Redis Cluster: names carry a shard's hash tag
	shards  int    // Options.Shards
}

// shard returns the shard of a wshub channel: always 0 without a cluster.
func (n naming) shard(channel string) int {
	if !n.sharded {
		return 0
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(channel))
	return int(h.Sum32() % uint32(n.shards))
}

// shardPrefix is what every Redis channel and key of shard starts with.
func (n naming) shardPrefix(shard int) string {
	if !n.sharded {
		return n.prefix
	}
	return n.prefix + "{" + strconv.Itoa(shard) + "}"
}

// names maps a wshub channel to its shard's prefix and its Redis channel.
func (n naming) names(channel string) (prefix, redisChannel string) {
	prefix = n.shardPrefix(n.shard(channel))
	return prefix, prefix + channel
}

// MaxChannelLength is the longest channel name this backplane carries, in
// bytes: far above what a hub makes (a prefix and a name of at most
// wshub.MaxNameLength), and what bounds the subscription connection's
// reader.
const MaxChannelLength = 32 << 10

// checkChannel returns an error wrapping backplane.ErrInvalidChannel for a
// channel name this backplane does not carry.
func checkChannel(ch string) error {
	switch {
	case ch == "":
		return backplane.ErrInvalidChannel
	case len(ch) > MaxChannelLength:
		return fmt.Errorf("%w: %d bytes, more than %d", backplane.ErrInvalidChannel, len(ch), MaxChannelLength)
	}
	return nil
}

// group validates channels and maps them to Redis channels, by shard.
func (n naming) group(channels []string) (map[int][]string, error) {
	groups := make(map[int][]string, 1)
	for _, ch := range channels {
		if err := checkChannel(ch); err != nil {
			return nil, err
		}
		sh := n.shard(ch)
		groups[sh] = append(groups[sh], n.shardPrefix(sh)+ch)
	}
	return groups, nil
}

// probeChannel returns the channel of shard prefix pre that the node named
// id probes itself on.
func probeChannel(pre, id string) string {
	return pre + "probe:" + id
}

// logKey returns the stream key of a Redis channel of shard prefix pre.
func logKey(pre, redisChannel string) string {
	return pre + "log:" + strings.TrimPrefix(redisChannel, pre)
}

// epochKey returns the epoch key of a Redis channel of shard prefix pre.
func epochKey(pre, redisChannel string) string {
	return pre + "epoch:" + strings.TrimPrefix(redisChannel, pre)
}
