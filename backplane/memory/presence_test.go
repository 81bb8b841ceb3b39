package memory_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub/backplane"
	"github.com/wshub/wshub/backplane/memory"
)

// presNode makes a node called name on bus and closes it when the test
// ends. Presence needs no Start.
func presNode(t testing.TB, bus *memory.Bus, name string) *memory.Node {
	t.Helper()
	n, err := bus.NewNode(name)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, n.Close()) })
	return n
}

// presRefresh refreshes instance at n and fails the test on error.
func presRefresh(t testing.TB, n *memory.Node, instance string) backplane.PresenceRefresh {
	t.Helper()
	r, err := n.RefreshPresence(bg, instance)
	require.NoError(t, err, "%s: RefreshPresence(%q)", n.Name(), instance)
	return r
}

// presSet updates instance at n and fails the test on error.
func presSet(t testing.TB, n *memory.Node, instance string, ups ...backplane.PresenceUpdate) []backplane.PresenceChange {
	t.Helper()
	changes, err := n.UpdatePresence(bg, instance, ups)
	require.NoError(t, err, "%s: UpdatePresence(%q, %v)", n.Name(), instance, ups)
	return changes
}

// presSessions returns member's sessions in key, read at n.
func presSessions(t testing.TB, n *memory.Node, key, member string) int {
	t.Helper()
	s, _, err := n.PresenceMember(bg, key, member)
	require.NoError(t, err)
	return s
}

func pup(key, member string, sessions int) backplane.PresenceUpdate {
	return backplane.PresenceUpdate{Key: key, Member: member, Sessions: sessions}
}

// TestPresencePartition: a partitioned node's presence calls fail with
// ErrUnavailable, so its instance is not refreshed; the other nodes remove
// its entries after the time to live, and once healed its instance reports
// Lost while a new one works.
func TestPresencePartition(t *testing.T) {
	const ttl = 200 * time.Millisecond
	const key = "t:room"
	bus := memory.NewBus()
	require.NoError(t, bus.SetPresenceTTL(ttl))
	a, b, c := presNode(t, bus, "a"), presNode(t, bus, "b"), presNode(t, bus, "c")
	presRefresh(t, a, "a-1")
	presRefresh(t, b, "b-1")
	presSet(t, a, "a-1", pup(key, "alice", 1), pup(key, "bob", 1))
	presSet(t, b, "b-1", pup(key, "bob", 1))

	require.NoError(t, bus.Partition("a"))
	_, err := a.RefreshPresence(bg, "a-1")
	assert.ErrorIs(t, err, backplane.ErrUnavailable, "RefreshPresence while partitioned")
	_, err = a.RefreshPresence(bg, "a-new")
	assert.ErrorIs(t, err, backplane.ErrUnavailable, "RefreshPresence of a new instance while partitioned")
	_, err = a.UpdatePresence(bg, "a-1", []backplane.PresenceUpdate{pup(key, "carol", 1)})
	assert.ErrorIs(t, err, backplane.ErrUnavailable, "UpdatePresence while partitioned")
	_, err = a.PresenceCount(bg, key)
	assert.ErrorIs(t, err, backplane.ErrUnavailable, "PresenceCount while partitioned")
	_, _, err = a.PresenceMember(bg, key, "alice")
	assert.ErrorIs(t, err, backplane.ErrUnavailable, "PresenceMember while partitioned")
	_, _, err = a.PresenceMembers(bg, key, "", 0)
	assert.ErrorIs(t, err, backplane.ErrUnavailable, "PresenceMembers while partitioned")

	// b goes on refreshing; c sees a's entries go.
	var removed []backplane.PresenceChange
	require.Eventually(t, func() bool {
		removed = append(removed, presRefresh(t, b, "b-1").Changes...)
		return presSessions(t, c, key, "alice") == 0
	}, waitTimeout, ttl/10, "a's entries are removed once its instance is not refreshed")
	assert.Equal(t, []backplane.PresenceChange{{Key: key, Member: "alice"}}, removed, "changes reported to b")
	s, insts, err := c.PresenceMember(bg, key, "bob")
	require.NoError(t, err)
	assert.Equal(t, 1, s)
	assert.Equal(t, []string{"b-1"}, insts)

	require.NoError(t, bus.Heal("a"))
	r := presRefresh(t, a, "a-1")
	assert.True(t, r.Lost, "the healed node's old instance is lost")
	_, err = a.UpdatePresence(bg, "a-1", []backplane.PresenceUpdate{pup(key, "alice", 1)})
	assert.ErrorIs(t, err, backplane.ErrUnavailable, "UpdatePresence of the lost instance")
	r = presRefresh(t, a, "a-2")
	assert.False(t, r.Lost, "a new instance of the healed node")
	assert.Equal(t, []backplane.PresenceChange{{Key: key, Member: "alice", Present: true}},
		presSet(t, a, "a-2", pup(key, "alice", 1), pup(key, "bob", 1)))
	n, err := c.PresenceCount(bg, key)
	require.NoError(t, err)
	assert.Equal(t, 2, n)
}

// TestPresenceShortPartition: a partition shorter than the time to live
// loses nothing.
func TestPresenceShortPartition(t *testing.T) {
	bus := memory.NewBus() // the default time to live, 10 s
	a, b := presNode(t, bus, "a"), presNode(t, bus, "b")
	presRefresh(t, a, "a-1")
	presSet(t, a, "a-1", pup("t:room", "alice", 1))
	require.NoError(t, bus.Partition("a"))
	require.NoError(t, bus.Heal("a"))
	presRefresh(t, b, "b-1")
	r := presRefresh(t, a, "a-1")
	assert.False(t, r.Lost)
	assert.Empty(t, r.Changes)
	assert.Equal(t, 1, presSessions(t, b, "t:room", "alice"))
}

// TestPresenceLostWithoutReaper: with no other live instance, the entries of
// an instance whose lease ran out stay until a live refresh; its own late
// refresh reports Lost and removes nothing, and the first refresh of its
// successor removes them, reporting the changes.
func TestPresenceLostWithoutReaper(t *testing.T) {
	const ttl = 100 * time.Millisecond
	const key = "t:room"
	bus := memory.NewBus()
	require.NoError(t, bus.SetPresenceTTL(ttl))
	a := presNode(t, bus, "a")
	presRefresh(t, a, "a-1")
	presSet(t, a, "a-1", pup(key, "alice", 2))

	require.Eventually(t, func() bool {
		_, err := a.UpdatePresence(bg, "a-1", []backplane.PresenceUpdate{pup(key, "alice", 2)})
		return err != nil
	}, waitTimeout, ttl/10, "the lease runs out")
	_, err := a.UpdatePresence(bg, "a-1", []backplane.PresenceUpdate{pup(key, "bob", 1)})
	require.ErrorIs(t, err, backplane.ErrUnavailable)
	assert.Equal(t, 2, presSessions(t, a, key, "alice"), "counted until removed")

	r := presRefresh(t, a, "a-1")
	assert.True(t, r.Lost)
	assert.Empty(t, r.Changes, "a Lost refresh removes nothing")
	assert.True(t, presRefresh(t, a, "a-1").Lost, "a dead instance stays dead")
	assert.Equal(t, 2, presSessions(t, a, key, "alice"), "counted until removed")

	r = presRefresh(t, a, "a-2")
	assert.False(t, r.Lost)
	assert.Equal(t, []backplane.PresenceChange{{Key: key, Member: "alice"}}, r.Changes)
	assert.Zero(t, presSessions(t, a, key, "alice"))
	assert.True(t, presRefresh(t, a, "a-1").Lost, "still dead once removed")
}

// TestSetPresenceTTL: the time to live must be positive; Next is a third of
// it; lowering it applies to instances refreshed before.
func TestSetPresenceTTL(t *testing.T) {
	bus := memory.NewBus()
	for _, d := range []time.Duration{0, -time.Second} {
		assert.Error(t, bus.SetPresenceTTL(d), "SetPresenceTTL(%v)", d)
	}
	a := presNode(t, bus, "a")
	assert.Equal(t, memory.DefaultPresenceTTL/3, presRefresh(t, a, "a-1").Next, "Next with the default time to live")
	require.NoError(t, bus.SetPresenceTTL(3*time.Hour))
	assert.Equal(t, time.Hour, presRefresh(t, a, "a-1").Next, "Next with a time to live of 3h")

	require.NoError(t, bus.SetPresenceTTL(time.Millisecond))
	require.Eventually(t, func() bool { return presRefresh(t, a, "a-1").Lost }, waitTimeout, time.Millisecond,
		"an instance refreshed before the time to live was lowered dies")
}

// TestDropPresence: the bus loses every entry, reports no change, and every
// instance that was alive is Lost; new instances work.
func TestDropPresence(t *testing.T) {
	const key = "t:room"
	bus := memory.NewBus()
	a, b := presNode(t, bus, "a"), presNode(t, bus, "b")
	presRefresh(t, a, "a-1")
	presRefresh(t, b, "b-1")
	presSet(t, a, "a-1", pup(key, "alice", 1))
	presSet(t, b, "b-1", pup(key, "bob", 1))

	bus.DropPresence()
	n, err := a.PresenceCount(bg, key)
	require.NoError(t, err)
	assert.Zero(t, n, "count after DropPresence")
	page, next, err := b.PresenceMembers(bg, key, "", 0)
	require.NoError(t, err)
	assert.Empty(t, page)
	assert.Empty(t, next)
	for _, c := range []struct {
		n    *memory.Node
		inst string
	}{{a, "a-1"}, {b, "b-1"}} {
		r := presRefresh(t, c.n, c.inst)
		assert.True(t, r.Lost, "%s after DropPresence", c.inst)
		assert.Empty(t, r.Changes, "%s after DropPresence", c.inst)
	}
	r := presRefresh(t, a, "a-2")
	assert.False(t, r.Lost)
	assert.Empty(t, r.Changes)
	assert.Equal(t, []backplane.PresenceChange{{Key: key, Member: "alice", Present: true}}, presSet(t, a, "a-2", pup(key, "alice", 1)))
}

// TestPresenceZeroBus: presence works on a zero Bus.
func TestPresenceZeroBus(t *testing.T) {
	var bus memory.Bus
	a := presNode(t, &bus, "a")
	assert.Equal(t, memory.DefaultPresenceTTL/3, presRefresh(t, a, "a-1").Next)
	presSet(t, a, "a-1", pup("t:room", "alice", 1))
	assert.Equal(t, 1, presSessions(t, a, "t:room", "alice"))
}

// TestPresenceBadInputAppliesNothing: a call with one invalid update applies
// none of its updates; empty members and instances are refused.
func TestPresenceBadInputAppliesNothing(t *testing.T) {
	const key = "t:room"
	bus := memory.NewBus()
	a := presNode(t, bus, "a")
	presRefresh(t, a, "a-1")
	for _, bad := range []backplane.PresenceUpdate{pup("", "bob", 1), pup(key, "", 1), pup(key, "bob", -1)} {
		changes, err := a.UpdatePresence(bg, "a-1", []backplane.PresenceUpdate{pup(key, "alice", 1), bad})
		assert.Error(t, err, "update %+v", bad)
		assert.Empty(t, changes, "update %+v", bad)
		assert.Zero(t, presSessions(t, a, key, "alice"), "a valid update before %+v", bad)
	}
	_, err := a.RefreshPresence(bg, "")
	assert.Error(t, err, "RefreshPresence of an empty instance")
	_, err = a.UpdatePresence(bg, "", []backplane.PresenceUpdate{pup(key, "alice", 1)})
	assert.Error(t, err, "UpdatePresence of an empty instance")
	changes, err := a.UpdatePresence(bg, "a-1", nil)
	assert.NoError(t, err, "no updates")
	assert.Empty(t, changes, "no updates")
}

// TestPresenceCanceledContext: every presence method returns ctx.Err() for
// a done context.
func TestPresenceCanceledContext(t *testing.T) {
	bus := memory.NewBus()
	a := presNode(t, bus, "a")
	presRefresh(t, a, "a-1")
	ctx, cancel := context.WithCancel(bg)
	cancel()
	_, err := a.RefreshPresence(ctx, "a-1")
	assert.ErrorIs(t, err, context.Canceled, "RefreshPresence")
	_, err = a.UpdatePresence(ctx, "a-1", []backplane.PresenceUpdate{pup("t:room", "alice", 1)})
	assert.ErrorIs(t, err, context.Canceled, "UpdatePresence")
	_, err = a.PresenceCount(ctx, "t:room")
	assert.ErrorIs(t, err, context.Canceled, "PresenceCount")
	_, _, err = a.PresenceMember(ctx, "t:room", "alice")
	assert.ErrorIs(t, err, context.Canceled, "PresenceMember")
	_, _, err = a.PresenceMembers(ctx, "t:room", "", 0)
	assert.ErrorIs(t, err, context.Canceled, "PresenceMembers")
	assert.Zero(t, presSessions(t, a, "t:room", "alice"))
}

// TestPresenceOverLimitError: the error names the refused update, counts
// the others refused, and comes with the changes of those applied, in the
// order of the updates.
func TestPresenceOverLimitError(t *testing.T) {
	bus := memory.NewBus()
	a := presNode(t, bus, "a")
	presRefresh(t, a, "a-1")
	changes, err := a.UpdatePresence(bg, "a-1", []backplane.PresenceUpdate{
		pup("t:x", "m1", 1),
		{Key: "u:alice", Member: "alice", Sessions: 3, Limit: 2},
		pup("t:x", "m2", 1),
		{Key: "u:bob", Member: "bob", Sessions: 5, Limit: 1},
	})
	require.ErrorIs(t, err, backplane.ErrOverLimit)
	assert.Contains(t, err.Error(), `"alice" in "u:alice"`)
	assert.Contains(t, err.Error(), "and 1 more")
	assert.Equal(t, []backplane.PresenceChange{{Key: "t:x", Member: "m1", Present: true}, {Key: "t:x", Member: "m2", Present: true}}, changes)
}

// TestPresenceModel checks counts, sessions and pages against a model
// through many random updates of three instances on a key large enough to
// split and merge the sorted structure many times.
func TestPresenceModel(t *testing.T) {
	const key, members, ops = "t:model", 3000, 30000
	rng := rand.New(rand.NewPCG(1, 2))
	bus := memory.NewBus()
	ns := []*memory.Node{presNode(t, bus, "a"), presNode(t, bus, "b")}
	insts := []struct {
		n    *memory.Node
		name string
	}{{ns[0], "a-1"}, {ns[0], "a-2"}, {ns[1], "b-1"}}
	for _, in := range insts {
		presRefresh(t, in.n, in.name)
	}
	// model[i][m] is instance i's sessions of member m.
	model := make([]map[string]int, len(insts))
	for i := range model {
		model[i] = make(map[string]int)
	}
	name := func(j int) string { return "m" + strconv.Itoa(j*7919%members) }
	total := func(m string) int {
		s := 0
		for i := range model {
			s += model[i][m]
		}
		return s
	}
	check := func(op int) {
		want := map[string]int{}
		for i := range model {
			for m, s := range model[i] {
				want[m] += s
			}
		}
		sorted := slices.Sorted(func(yield func(string) bool) {
			for m := range want {
				if !yield(m) {
					return
				}
			}
		})
		n, err := ns[1].PresenceCount(bg, key)
		require.NoError(t, err)
		require.Equal(t, len(want), n, "op %d: count", op)
		// A whole walk by a random limit.
		limit := 1 + rng.IntN(300)
		var got []string
		cursor := ""
		for {
			page, next, err := ns[0].PresenceMembers(bg, key, cursor, limit)
			require.NoError(t, err)
			require.LessOrEqual(t, len(page), limit)
			for _, e := range page {
				require.Equal(t, want[e.Member], e.Sessions, "op %d: sessions of %q", op, e.Member)
				got = append(got, e.Member)
			}
			if next == "" {
				break
			}
			cursor = next
		}
		require.Equal(t, sorted, got, "op %d: walk by %d", op, limit)
		// Pages after cursors that are not members.
		for range 20 {
			c := fmt.Sprintf("m%d~", rng.IntN(members))
			page, next, err := ns[1].PresenceMembers(bg, key, c, 5)
			require.NoError(t, err)
			from := sort.SearchStrings(sorted, c)
			end := min(from+5, len(sorted))
			wantPage := append([]string{}, sorted[from:end]...)
			gotPage := make([]string, len(page))
			for i, e := range page {
				gotPage[i] = e.Member
			}
			require.Equal(t, wantPage, gotPage, "op %d: page after %q", op, c)
			if end == len(sorted) {
				require.Empty(t, next, "op %d: cursor of the last page", op)
			} else {
				require.Equal(t, sorted[end-1], next, "op %d: cursor", op)
			}
		}
	}
	for op := range ops {
		i := rng.IntN(len(insts))
		// Grow during the first third, shrink during the last.
		j := rng.IntN(members)
		m := name(j)
		s := rng.IntN(3)
		switch {
		case op < ops/3:
			s++
		case op > 2*ops/3:
			s = 0
		}
		before := total(m)
		changes := presSet(t, insts[i].n, insts[i].name, pup(key, m, s))
		if s == 0 {
			delete(model[i], m)
		} else {
			model[i][m] = s
		}
		after := total(m)
		var want []backplane.PresenceChange
		switch {
		case before == 0 && after > 0:
			want = []backplane.PresenceChange{{Key: key, Member: m, Present: true}}
		case before > 0 && after == 0:
			want = []backplane.PresenceChange{{Key: key, Member: m}}
		}
		require.Equal(t, want, changes, "op %d: %s sets %q to %d", op, insts[i].name, m, s)
		if op%3000 == 0 || op == ops-1 {
			check(op)
		}
	}
	// Empty the key.
	for i, in := range insts {
		var ups []backplane.PresenceUpdate
		for m := range model[i] {
			ups = append(ups, pup(key, m, 0))
		}
		presSet(t, in.n, in.name, ups...)
		clear(model[i])
	}
	check(ops)
}

// benchPresence returns a node and a live instance of a bus whose key
// "t:big" has members members.
func benchPresence(b *testing.B, members int) *memory.Node {
	bus := memory.NewBus()
	require.NoError(b, bus.SetPresenceTTL(time.Hour))
	n := presNode(b, bus, "a")
	presRefresh(b, n, "a-1")
	ups := make([]backplane.PresenceUpdate, 0, members)
	for i := range members {
		ups = append(ups, pup("t:big", "m"+strconv.Itoa(i), 1))
	}
	presSet(b, n, "a-1", ups...)
	return n
}

// BenchmarkPresenceJoinLeave: one member joins and leaves a key of 100 000
// members.
func BenchmarkPresenceJoinLeave(b *testing.B) {
	n := benchPresence(b, 100_000)
	join := []backplane.PresenceUpdate{pup("t:big", "m50000x", 1)}
	leave := []backplane.PresenceUpdate{pup("t:big", "m50000x", 0)}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := n.UpdatePresence(bg, "a-1", join); err != nil {
			b.Fatal(err)
		}
		if _, err := n.UpdatePresence(bg, "a-1", leave); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPresenceMembers: a page of 100 from the middle of a key of
// 100 000 members.
func BenchmarkPresenceMembers(b *testing.B) {
	n := benchPresence(b, 100_000)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		page, _, err := n.PresenceMembers(bg, "t:big", "m5", 100)
		if err != nil || len(page) != 100 {
			b.Fatal(err, len(page))
		}
	}
}

// BenchmarkPresenceCount: the count of a key of 100 000 members.
func BenchmarkPresenceCount(b *testing.B) {
	n := benchPresence(b, 100_000)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if c, err := n.PresenceCount(bg, "t:big"); err != nil || c != 100_000 {
			b.Fatal(err, c)
		}
	}
}
