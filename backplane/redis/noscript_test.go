package redis_test

import (
	"strconv"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	wsredis "github.com/wshub/wshub/backplane/redis"
	"github.com/wshub/wshub/internal/redistest"
)

// After Redis loses its scripts (a restart, SCRIPT FLUSH), concurrent
// pipelines reload the publish script and resend only the commands that
// found it missing: no message is published twice.
func TestStreamsScriptFlushPublishesNothingTwice(t *testing.T) {
	srv := redistest.Start(t)
	rc := srv.Client(t)
	o := wsredis.StreamsOptions{Options: wsredis.Options{Prefix: "t" + randomHex() + ":"}, MaxLen: 100000}
	a := newStreamsNode(t, srv.Addr(), o)
	dups := 0
	for iter := range 20 {
		require.NoError(t, rc.ScriptFlush(bg).Err())
		ch := "n:" + strconv.Itoa(iter)
		var wg sync.WaitGroup
		for g := range 512 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_ = a.Publish(bg, ch, []byte(strconv.Itoa(g)))
			}()
		}
		wg.Wait()
		msgs, err := rc.XRange(bg, o.Prefix+"log:"+ch, "-", "+").Result()
		require.NoError(t, err)
		seen := map[string]int{}
		for _, m := range msgs {
			seen[m.Values["d"].(string)]++
		}
		for p, n := range seen {
			if n > 1 {
				dups++
				t.Logf("iteration %d: payload %s is %d times in the log (%d entries for 512 publishes)", iter, p, n, len(msgs))
				break
			}
		}
	}
	require.Zero(t, dups, "iterations with a message published twice")
}
