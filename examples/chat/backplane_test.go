package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub/backplane/memory"
)

// A node tells its own sessions, and only those, when its link to the
// backplane goes down and when it is restored, with whether messages may
// have been missed meanwhile; for a while after, it does not take the
// presence record's word that a user is offline.
func TestBackplaneStateIsTold(t *testing.T) {
	bus := memory.NewBus()
	var urls []string
	for _, id := range []string{"a", "b"} {
		bp, err := bus.NewNode(id)
		require.NoError(t, err)
		t.Cleanup(func() { assert.NoError(t, bp.Close()) })
		urls = append(urls, startChat(t, bp, id).URL)
	}
	alice := dial(t, urls[0], "alice", "a")
	bob := dial(t, urls[1], "bob", "b")
	alice.waitMembers("lobby", "alice", "bob")

	require.NoError(t, bus.Partition("a"))
	alice.expect(event{Type: "backplane", State: "down"})
	// What bob says meanwhile does not reach alice's node.
	bob.send(`{"type":"say","room":"lobby","text":"lost"}`)
	bob.expect(event{Type: "message", Room: "lobby", From: "bob", Text: "lost"})
	require.NoError(t, bus.Heal("a"))
	alice.expect(event{Type: "backplane", State: "restored", Gap: true})

	// A restore with nothing lost says so.
	require.NoError(t, bus.Partition("a"))
	alice.expect(event{Type: "backplane", State: "down"})
	require.NoError(t, bus.Heal("a"))
	alice.expect(event{Type: "backplane", State: "restored"})

	// Right after a restore, the presence record may miss users who are
	// online: a direct message to a user it does not hold is sent anyway.
	alice.send(`{"type":"dm","to":"carol","text":"are you back"}`)
	alice.expect(event{Type: "dm", From: "alice", To: "carol", Text: "are you back"})

	bob.send(`{"type":"say","room":"lobby","text":"back"}`)
	alice.expect(event{Type: "message", Room: "lobby", From: "bob", Text: "back"})
	select {
	case m := <-bob.msgs:
		if e := string(m); assert.NotContains(t, e, `"backplane"`, "bob's node never lost its link") {
			assert.Contains(t, e, `"text":"back"`)
		}
	case <-time.After(waitFor):
		t.Fatal("bob did not get his own message")
	}
}
