package redis

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub/internal/redistest"
)

// A write that reaches Redis after its instance's lease ended (sent before,
// delayed on the way) is refused by the script, and nothing of it is kept:
// the instance may already be taken for dead, and its entries removed.
func TestPresenceLateWriteIsRefused(t *testing.T) {
	srv := redistest.Start(t)
	rc := srv.Client(t)
	ctx := context.Background()
	p := newPresence(presenceConfig{prefix: "late:"})
	n := p.names("u:x")
	keys := append(n.scriptKeys("a"), p.keySet("a"))
	now, err := rc.Time(ctx).Result()
	require.NoError(t, err)

	code, err := updateScript.Run(ctx, rc, keys, "a", "x", 1, 0, now.UnixMilli()-1, "u:x").Int64()
	require.NoError(t, err)
	assert.EqualValues(t, updateExpired, code)
	left, err := rc.Keys(ctx, "late:*").Result()
	require.NoError(t, err)
	assert.Empty(t, left, "nothing of a late write is kept")

	code, err = updateScript.Run(ctx, rc, keys, "a", "x", 1, 0, now.Add(time.Minute).UnixMilli(), "u:x").Int64()
	require.NoError(t, err)
	assert.EqualValues(t, updatePresent, code, "the same write in time")
	members, err := rc.SMembers(ctx, p.keySet("a")).Result()
	require.NoError(t, err)
	assert.Equal(t, []string{"u:x"}, members, "the key is in the instance's key set with its entry")
}

// The names of a presence key's Redis keys share a hash tag that is never
// empty, and an instance's hash never ends like another key's names.
func TestPresenceNames(t *testing.T) {
	p := newPresence(presenceConfig{prefix: "w:"})
	for _, tc := range []struct{ key, inst, tag, hash string }{
		{"u:x", "n.1", ":u:x", "w:p{:u:x}:i:n.1"},
		{"}x", "n}1", ":", "w:p{:}x}:i:n%7D1"},
		{"a}b", "n%}", ":a", "w:p{:a}b}:i:n%25%7D"},
		{"{", "{n}", ":{", "w:p{:{}:i:{n%7D"},
	} {
		n := p.names(tc.key)
		assert.Equal(t, tc.hash, n.instance(tc.inst))
		for _, name := range append(n.scriptKeys(tc.inst), n.total) {
			assert.Equal(t, tc.tag, hashTag(name), name)
		}
	}
	assert.Equal(t, "w:pk:a{1}", p.keySet("a{1}"))
	assert.Equal(t, "w:pl:a{1}", p.lockKey("a{1}"))
	assert.Equal(t, "w:pn", p.leaseKey())
}

// hashTag returns what Redis Cluster hashes of name.
func hashTag(name string) string {
	i := -1
	for j := range len(name) {
		if name[j] == '{' {
			i = j
			break
		}
	}
	if i < 0 {
		return name
	}
	for j := i + 1; j < len(name); j++ {
		if name[j] == '}' {
			if j == i+1 {
				return name
			}
			return name[i+1 : j]
		}
	}
	return name
}
