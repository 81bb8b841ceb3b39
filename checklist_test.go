package wshub

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub/backplane"
	"github.com/wshub/wshub/internal/redistest"
)

// checklistACL is the Redis ACL the README's production checklist gives,
// word for word.
const checklistACL = `ACL SETUSER wshub on >secret ~wshub:* &wshub:* +@pubsub +@stream +@hash +@sortedset +@set +get +set +del +exists +pexpire +time +ping +info +evalsha +eval +script|load`

// A node whose Redis user has only the checklist's rights works in both
// modes: the README's ACL is enough, and it confines the node to its
// prefix.
func TestChecklistACLIsEnough(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	require.NoError(t, err)
	require.Contains(t, string(readme), checklistACL, "the README gives this ACL")
	srv := redistest.Start(t)
	admin := srv.Client(t)
	args := make([]any, 0, 20)
	for _, w := range strings.Fields(checklistACL) {
		args = append(args, w)
	}
	require.NoError(t, admin.Do(bg, args...).Err())
	for _, mode := range []string{"pubsub", "streams"} {
		t.Run(mode, func(t *testing.T) {
			bp, err := backplane.Open(bg, "redis://wshub:secret@"+srv.Addr()+"/0?mode="+mode)
			require.NoError(t, err)
			t.Cleanup(func() { _ = bp.Close() })
			c := newClusterOn(t, 1, nil, func(*testing.T, string) (backplane.Backplane, func() uint64) {
				return bp, func() uint64 { return 0 }
			})
			n := c.nodes[0]
			cl := dial(t, n, "alice")
			require.NoError(t, n.hub.Send(bg, "alice", Text("hi")))
			require.Equal(t, "hi", cl.nextText())
			require.Eventually(t, func() bool { // presence is written too
				n, err := n.hub.Online(bg, "alice")
				return err == nil && n == 1
			}, waitFor, 10*time.Millisecond)
			require.Eventually(t, func() bool { return n.hub.Health() == nil }, waitFor, 10*time.Millisecond)
		})
	}
	// And the user can touch nothing outside the prefix.
	bp, err := backplane.Open(bg, "redis://wshub:secret@"+srv.Addr()+"/0?prefix=other:")
	require.NoError(t, err)
	defer bp.Close()
	require.NoError(t, bp.Start(func(backplane.Message) {}))
	require.Error(t, bp.Publish(bg, "u:alice", []byte("x")), "a publish outside the prefix is refused")
}
