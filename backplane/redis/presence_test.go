package redis_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub/backplane"
	wsredis "github.com/wshub/wshub/backplane/redis"
	"github.com/wshub/wshub/internal/redistest"
)

// Presence tests use a short time to live: an instance is taken for dead
// presenceTTL + 1s (the grace for clock skew) after its last refresh.
const (
	presenceTTL  = time.Second
	presenceWait = 20 * time.Second // bound of every wait for a removal
)

// presenceNode is a backplane of this package as the presence tests use it.
type presenceNode interface {
	backplane.Backplane
	backplane.Presence
}

// newPresenceNode returns a PubSub, or a Streams with streams set, on its
// own client of addrs (a cluster client when cluster is set), closed in
// t's cleanup.
func newPresenceNode(t *testing.T, addrs []string, cluster, streams bool, prefix string, ttl time.Duration) presenceNode {
	t.Helper()
	var c goredis.UniversalClient
	if cluster {
		c = goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: addrs})
	} else {
		c = goredis.NewClient(&goredis.Options{Addr: addrs[0]})
	}
	t.Cleanup(func() { _ = c.Close() })
	o := wsredis.Options{Prefix: prefix, Logger: quiet, PresenceTTL: ttl}
	var n presenceNode
	if streams {
		s, err := wsredis.NewStreams(c, &wsredis.StreamsOptions{Options: o})
		require.NoError(t, err)
		n = s
	} else {
		p, err := wsredis.NewPubSub(c, &o)
		require.NoError(t, err)
		n = p
	}
	t.Cleanup(func() { _ = n.Close() })
	return n
}

// refresh refreshes inst and requires it to be alive.
func refresh(t *testing.T, p backplane.Presence, inst string) backplane.PresenceRefresh {
	t.Helper()
	r, err := p.RefreshPresence(bg, inst)
	require.NoError(t, err)
	require.False(t, r.Lost, "instance %s lost", inst)
	return r
}

// set sets one entry of inst and returns the changes.
func set(t *testing.T, p backplane.Presence, inst, key, member string, sessions int) []backplane.PresenceChange {
	t.Helper()
	ch, err := p.UpdatePresence(bg, inst, []backplane.PresenceUpdate{{Key: key, Member: member, Sessions: sessions}})
	require.NoError(t, err)
	return ch
}

func present(key, member string) backplane.PresenceChange {
	return backplane.PresenceChange{Key: key, Member: member, Present: true}
}

func absent(key, member string) backplane.PresenceChange {
	return backplane.PresenceChange{Key: key, Member: member, Present: false}
}

// walk reads every page of key with limit and returns the members in the
// order read.
func walk(t *testing.T, p backplane.Presence, key string, limit int) []backplane.PresenceEntry {
	t.Helper()
	var all []backplane.PresenceEntry
	cursor := ""
	for pages := 0; ; pages++ {
		require.Less(t, pages, 100000, "the walk does not end")
		page, next, err := p.PresenceMembers(bg, key, cursor, limit)
		require.NoError(t, err)
		if limit < 1 {
			require.LessOrEqual(t, len(page), 100)
		} else {
			require.LessOrEqual(t, len(page), limit)
		}
		all = append(all, page...)
		if next == "" {
			return all
		}
		require.NotEmpty(t, page, "a page before the last one is empty")
		cursor = next
	}
}

// refresher refreshes one instance at the Next it is told, as a hub does,
// and keeps the changes it reports, until stopped.
type refresher struct {
	mu      sync.Mutex
	changes []backplane.PresenceChange
	lost    bool
	errs    int
	stop    chan struct{}
	done    chan struct{}
}

func startRefresher(t *testing.T, p backplane.Presence, inst string) *refresher {
	r := &refresher{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for {
			res, err := p.RefreshPresence(bg, inst)
			next := 10 * time.Millisecond
			r.mu.Lock()
			if err != nil {
				r.errs++
			} else {
				r.changes = append(r.changes, res.Changes...)
				r.lost = r.lost || res.Lost
				next = max(min(res.Next, 50*time.Millisecond), time.Millisecond)
			}
			r.mu.Unlock()
			select {
			case <-r.stop:
				return
			case <-time.After(next):
			}
		}
	}()
	t.Cleanup(r.halt)
	return r
}

// halt stops the refresher and waits for it; calling it again does nothing.
func (r *refresher) halt() {
	select {
	case <-r.stop:
	default:
		close(r.stop)
	}
	<-r.done
}

func (r *refresher) got() ([]backplane.PresenceChange, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.changes), r.lost
}

// TestPresenceBasics sets, counts, reads and pages entries of two
// instances on two nodes, for both types.
func TestPresenceBasics(t *testing.T) {
	srv := redistest.Start(t)
	for _, streams := range []bool{false, true} {
		t.Run(map[bool]string{false: "pubsub", true: "streams"}[streams], func(t *testing.T) {
			prefix := "t" + randomHex() + ":"
			a := newPresenceNode(t, []string{srv.Addr()}, false, streams, prefix, 10*time.Second)
			b := newPresenceNode(t, []string{srv.Addr()}, false, streams, prefix, 10*time.Second)
			r := refresh(t, a, "a.1")
			assert.Equal(t, 10*time.Second/3, r.Next, "Next is a third of the TTL")
			assert.Empty(t, r.Changes)
			refresh(t, b, "b.1")

			assert.Equal(t, []backplane.PresenceChange{present("u:x", "x")}, set(t, a, "a.1", "u:x", "x", 2))
			assert.Empty(t, set(t, a, "a.1", "u:x", "x", 2), "setting what is set changes nothing")
			assert.Empty(t, set(t, b, "b.1", "u:x", "x", 1), "x is present already")
			n, insts, err := b.PresenceMember(bg, "u:x", "x")
			require.NoError(t, err)
			assert.Equal(t, 3, n)
			assert.ElementsMatch(t, []string{"a.1", "b.1"}, insts)
			count, err := a.PresenceCount(bg, "u:x")
			require.NoError(t, err)
			assert.Equal(t, 1, count)

			ch, err := a.UpdatePresence(bg, "a.1", []backplane.PresenceUpdate{
				{Key: "t:room", Member: "x", Sessions: 1},
				{Key: "t:room", Member: "y", Sessions: 1},
				{Key: "t:room", Member: "z", Sessions: 3},
				{Key: "t:room", Member: "z", Sessions: 0}, // in order: z leaves again
				{Key: "u:x", Member: "x", Sessions: 0},
			})
			require.NoError(t, err)
			assert.Equal(t, []backplane.PresenceChange{
				present("t:room", "x"), present("t:room", "y"),
				present("t:room", "z"), absent("t:room", "z"),
			}, ch)
			n, insts, err = a.PresenceMember(bg, "u:x", "x")
			require.NoError(t, err)
			assert.Equal(t, 1, n)
			assert.Equal(t, []string{"b.1"}, insts)
			assert.Equal(t, []backplane.PresenceChange{absent("u:x", "x")}, set(t, b, "b.1", "u:x", "x", 0))
			n, insts, err = a.PresenceMember(bg, "u:x", "x")
			require.NoError(t, err)
			assert.Zero(t, n)
			assert.Empty(t, insts)
			count, err = b.PresenceCount(bg, "u:x")
			require.NoError(t, err)
			assert.Zero(t, count)

			assert.Empty(t, set(t, b, "b.1", "t:room", "y", 2))
			assert.Equal(t, []backplane.PresenceEntry{{Member: "x", Sessions: 1}, {Member: "y", Sessions: 3}}, walk(t, b, "t:room", 0))
			page, next, err := b.PresenceMembers(bg, "t:room", "", 1)
			require.NoError(t, err)
			assert.Equal(t, []backplane.PresenceEntry{{Member: "x", Sessions: 1}}, page)
			assert.Equal(t, "x", next, "the cursor is the page's last member")
			page, next, err = b.PresenceMembers(bg, "t:room", next, 1)
			require.NoError(t, err)
			assert.Equal(t, []backplane.PresenceEntry{{Member: "y", Sessions: 3}}, page)
			assert.Empty(t, next, "the last page")
			page, next, err = b.PresenceMembers(bg, "t:nobody", "", 10)
			require.NoError(t, err)
			assert.Empty(t, page)
			assert.Empty(t, next)

			// Once every entry is gone, nothing of the key is left in Redis.
			set(t, a, "a.1", "t:room", "x", 0)
			set(t, a, "a.1", "t:room", "y", 0)
			assert.Equal(t, []backplane.PresenceChange{absent("t:room", "y")}, set(t, b, "b.1", "t:room", "y", 0))
			keys, err := srv.Client(t).Keys(bg, prefix+"*").Result()
			require.NoError(t, err)
			sort.Strings(keys)
			assert.Equal(t, []string{prefix + "pn"}, keys, "only the lease set is left")
		})
	}
}

// TestPresencePaging walks a key of 1500 members 100 at a time: each is
// returned exactly once, in byte order, and pages cost no more than asked.
func TestPresencePaging(t *testing.T) {
	srv := redistest.Start(t)
	prefix := "t" + randomHex() + ":"
	a := newPresenceNode(t, []string{srv.Addr()}, false, false, prefix, 10*time.Second)
	refresh(t, a, "a")
	var ups []backplane.PresenceUpdate
	want := make([]backplane.PresenceEntry, 0, 1500)
	for i := range 1500 {
		m := fmt.Sprintf("m%04d", i)
		switch i % 250 { // some awkward names
		case 1:
			m += "{x}"
		case 2:
			m += " \xff"
		case 3:
			m = "}" + m
		case 4:
			m = []string{"+", "-", "(", "[", "\x00", "a\x00"}[i/250]
		}
		ups = append(ups, backplane.PresenceUpdate{Key: "t:big", Member: m, Sessions: 1 + i%3})
		want = append(want, backplane.PresenceEntry{Member: m, Sessions: 1 + i%3})
	}
	ch, err := a.UpdatePresence(bg, "a", ups) // 1500 updates: two pipelines
	require.NoError(t, err)
	assert.Len(t, ch, 1500)
	sort.Slice(want, func(i, j int) bool { return want[i].Member < want[j].Member })

	count, err := a.PresenceCount(bg, "t:big")
	require.NoError(t, err)
	assert.Equal(t, 1500, count)
	assert.Equal(t, want, walk(t, a, "t:big", 100))
	assert.Equal(t, want, walk(t, a, "t:big", 7))
	page, next, err := a.PresenceMembers(bg, "t:big", "", 0)
	require.NoError(t, err)
	assert.Len(t, page, 100, "a limit below 1 means 100")
	assert.Equal(t, want[99].Member, next)
	page, _, err = a.PresenceMembers(bg, "t:big", "", 5000)
	require.NoError(t, err)
	assert.Len(t, page, 1000, "a page has 1000 members at most")

	// Members that join and leave during a walk do not disturb the others.
	var seen []string
	cursor := ""
	for i := 0; ; i++ {
		page, next, err := a.PresenceMembers(bg, "t:big", cursor, 100)
		require.NoError(t, err)
		for _, e := range page {
			seen = append(seen, e.Member)
		}
		if next == "" {
			break
		}
		cursor = next
		set(t, a, "a", "t:big", fmt.Sprintf("m%04d+", i*100), 1) // joins behind or ahead
		set(t, a, "a", "t:big", fmt.Sprintf("m%04d", 1499-i), 0) // leaves ahead
	}
	counts := map[string]int{}
	for _, m := range seen {
		counts[m]++
	}
	for _, e := range want[:700] { // never removed before the walk passed them
		assert.Equal(t, 1, counts[e.Member], e.Member)
	}
	for m, n := range counts {
		assert.Equal(t, 1, n, "%s returned %d times", m, n)
	}
	assert.True(t, slices.IsSorted(seen))
}

// TestPresenceLimit: an update that would take a member over its limit is
// refused, the other updates of the call are applied, lowering is never
// refused, and instances that race for the last place cannot both get it.
func TestPresenceLimit(t *testing.T) {
	srv := redistest.Start(t)
	prefix := "t" + randomHex() + ":"
	a := newPresenceNode(t, []string{srv.Addr()}, false, false, prefix, 10*time.Second)
	refresh(t, a, "a")
	ch, err := a.UpdatePresence(bg, "a", []backplane.PresenceUpdate{
		{Key: "u:x", Member: "x", Sessions: 3, Limit: 2},
		{Key: "u:y", Member: "y", Sessions: 1, Limit: 2},
	})
	require.ErrorIs(t, err, backplane.ErrOverLimit)
	assert.Equal(t, []backplane.PresenceChange{present("u:y", "y")}, ch, "the other update is applied")
	n, _, err := a.PresenceMember(bg, "u:x", "x")
	require.NoError(t, err)
	assert.Zero(t, n, "nothing of the refused update is kept")
	_, err = a.UpdatePresence(bg, "a", []backplane.PresenceUpdate{{Key: "u:y", Member: "y", Sessions: 2, Limit: 2}})
	require.NoError(t, err, "up to the limit")
	_, err = a.UpdatePresence(bg, "a", []backplane.PresenceUpdate{{Key: "u:y", Member: "y", Sessions: 1, Limit: 1}})
	require.NoError(t, err, "lowering")
	_, err = a.UpdatePresence(bg, "a", []backplane.PresenceUpdate{{Key: "u:y", Member: "y", Sessions: 1, Limit: 1}})
	require.NoError(t, err, "setting what is set is no increase")

	const racers = 8
	nodes := make([]presenceNode, racers)
	for i := range nodes {
		nodes[i] = newPresenceNode(t, []string{srv.Addr()}, false, i%2 == 1, prefix, 10*time.Second)
		refresh(t, nodes[i], "r"+strconv.Itoa(i))
	}
	for round := range 20 {
		key := "u:race" + strconv.Itoa(round)
		set(t, a, "a", key, "m", 2) // 2 of 3 places taken
		start := make(chan struct{})
		errs := make([]error, racers)
		var wg sync.WaitGroup
		for i, node := range nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				_, errs[i] = node.UpdatePresence(bg, "r"+strconv.Itoa(i), []backplane.PresenceUpdate{{Key: key, Member: "m", Sessions: 1, Limit: 3}})
			}()
		}
		close(start)
		wg.Wait()
		won := 0
		for _, err := range errs {
			if err == nil {
				won++
			} else {
				require.ErrorIs(t, err, backplane.ErrOverLimit)
			}
		}
		assert.Equal(t, 1, won, "round %d: winners of the last place", round)
		n, insts, err := a.PresenceMember(bg, key, "m")
		require.NoError(t, err)
		assert.Equal(t, 3, n)
		assert.Len(t, insts, 2)
	}
}

// TestPresenceDeadInstance: an instance that stops refreshing is removed by
// the refreshes of the others, each change reported once; its later
// refresh reports it lost, and its writes are refused.
func TestPresenceDeadInstance(t *testing.T) {
	srv := redistest.Start(t)
	rc := srv.Client(t)
	prefix := "t" + randomHex() + ":"
	addrs := []string{srv.Addr()}
	a := newPresenceNode(t, addrs, false, false, prefix, presenceTTL)
	b := newPresenceNode(t, addrs, false, true, prefix, presenceTTL)
	c := newPresenceNode(t, addrs, false, false, prefix, presenceTTL)
	refresh(t, a, "a")
	refresh(t, b, "b")
	var ups []backplane.PresenceUpdate
	var want []backplane.PresenceChange // what a's death changes
	for i := range 20 {
		m := "a" + strconv.Itoa(i)
		ups = append(ups, backplane.PresenceUpdate{Key: "u:" + m, Member: m, Sessions: 1},
			backplane.PresenceUpdate{Key: "t:room", Member: m, Sessions: 2})
		want = append(want, absent("u:"+m, m), absent("t:room", m))
	}
	for i := range 5 {
		m := "s" + strconv.Itoa(i) // also on b: stays present
		ups = append(ups, backplane.PresenceUpdate{Key: "t:room", Member: m, Sessions: 1})
		set(t, b, "b", "t:room", m, 1)
	}
	_, err := a.UpdatePresence(bg, "a", ups)
	require.NoError(t, err)
	count, err := b.PresenceCount(bg, "t:room")
	require.NoError(t, err)
	require.Equal(t, 25, count)

	// a stops refreshing; b and c go on.
	rb := startRefresher(t, b, "b")
	rcc := startRefresher(t, c, "c")
	require.Eventually(t, func() bool {
		return errors.Is(rc.ZScore(bg, prefix+"pn", "a").Err(), goredis.Nil)
	}, presenceWait, 10*time.Millisecond, "a is removed from the lease set")
	rb.halt()
	rcc.halt()

	got1, lost1 := rb.got()
	got2, lost2 := rcc.got()
	assert.False(t, lost1 || lost2)
	assert.ElementsMatch(t, want, append(got1, got2...), "each change reported once, by b or c")
	count, err = c.PresenceCount(bg, "t:room")
	require.NoError(t, err)
	assert.Equal(t, 5, count)
	page := walk(t, c, "t:room", 100)
	assert.Len(t, page, 5)
	for _, e := range page {
		assert.Equal(t, 1, e.Sessions, e.Member)
	}
	n, insts, err := c.PresenceMember(bg, "t:room", "s1")
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	assert.Equal(t, []string{"b"}, insts)
	keys, err := rc.Keys(bg, prefix+"p[kl]:a").Result()
	require.NoError(t, err)
	assert.Empty(t, keys, "a's key set and lock are gone")

	// a is dead: its writes are refused, its refresh reports it lost, and
	// it stays dead.
	_, err = a.UpdatePresence(bg, "a", []backplane.PresenceUpdate{{Key: "u:late", Member: "late", Sessions: 1}})
	require.ErrorIs(t, err, backplane.ErrUnavailable)
	r, err := a.RefreshPresence(bg, "a")
	require.NoError(t, err)
	assert.True(t, r.Lost)
	r, err = a.RefreshPresence(bg, "a")
	require.NoError(t, err)
	assert.True(t, r.Lost, "a lost instance stays lost")
	_, err = a.UpdatePresence(bg, "a", []backplane.PresenceUpdate{{Key: "u:late", Member: "late", Sessions: 1}})
	require.ErrorIs(t, err, backplane.ErrUnavailable)
	n, _, err = c.PresenceMember(bg, "u:late", "late")
	require.NoError(t, err)
	assert.Zero(t, n)

	// Its node starts a new instance, which works.
	refresh(t, a, "a2")
	assert.Equal(t, []backplane.PresenceChange{present("u:a1", "a1")}, set(t, a, "a2", "u:a1", "a1", 1))
}

// TestPresenceReapIsBounded: a dead instance with more keys than one
// refresh removes is removed over several, each asking to be called again
// soon.
func TestPresenceReapIsBounded(t *testing.T) {
	srv := redistest.Start(t)
	prefix := "t" + randomHex() + ":"
	addrs := []string{srv.Addr()}
	a := newPresenceNode(t, addrs, false, false, prefix, presenceTTL)
	b := newPresenceNode(t, addrs, false, false, prefix, presenceTTL)
	refresh(t, a, "a")
	var ups []backplane.PresenceUpdate
	for i := range 2500 {
		ups = append(ups, backplane.PresenceUpdate{Key: "u:" + strconv.Itoa(i), Member: "m", Sessions: 1})
	}
	ups = append(ups, backplane.PresenceUpdate{Key: "t:wide", Member: "x", Sessions: 1})
	for i := range 250 { // more than one reap script removes
		ups = append(ups, backplane.PresenceUpdate{Key: "t:wide", Member: strconv.Itoa(i), Sessions: 1})
	}
	_, err := a.UpdatePresence(bg, "a", ups)
	require.NoError(t, err)

	var (
		mu      sync.Mutex
		got     []backplane.PresenceChange
		sawSoon bool
	)
	require.Eventually(t, func() bool {
		r, err := b.RefreshPresence(bg, "b")
		if !assert.NoError(t, err) || !assert.False(t, r.Lost) {
			return false
		}
		mu.Lock()
		defer mu.Unlock()
		got = append(got, r.Changes...)
		if len(r.Changes) > 0 && r.Next < presenceTTL/3 {
			sawSoon = true
		}
		return len(got) >= 2751
	}, presenceWait, 20*time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	assert.True(t, sawSoon, "a refresh that left work asked to be called again soon")
	assert.Len(t, got, 2751)
	seen := map[backplane.PresenceChange]bool{}
	for _, c := range got {
		assert.False(t, c.Present)
		assert.False(t, seen[c], "%v reported twice", c)
		seen[c] = true
	}
	r := refresh(t, b, "b")
	assert.Empty(t, r.Changes)
	assert.Equal(t, presenceTTL/3, r.Next, "nothing left")
	count, err := b.PresenceCount(bg, "t:wide")
	require.NoError(t, err)
	assert.Zero(t, count)
}

// TestPresenceRedisRestart: after a Redis restart without persistence, the
// next refresh of an instance reports it lost, and what it wrote between
// the restart and that refresh is removed with it.
func TestPresenceRedisRestart(t *testing.T) {
	srv := redistest.Start(t)
	prefix := "t" + randomHex() + ":"
	a := newPresenceNode(t, []string{srv.Addr()}, false, false, prefix, 10*time.Second)
	refresh(t, a, "a")
	set(t, a, "a", "u:x", "x", 1)
	srv.Restart(t)

	// Written to the empty Redis, under a lease it no longer has.
	require.Eventually(t, func() bool {
		_, err := a.UpdatePresence(bg, "a", []backplane.PresenceUpdate{{Key: "u:y", Member: "y", Sessions: 1}})
		return err == nil
	}, presenceWait, 10*time.Millisecond, "Redis is back")
	r, err := a.RefreshPresence(bg, "a")
	require.NoError(t, err)
	assert.True(t, r.Lost, "the restart lost the instance")
	assert.Equal(t, []backplane.PresenceChange{absent("u:y", "y")}, r.Changes, "the write after the restart is removed")
	n, _, err := a.PresenceMember(bg, "u:y", "y")
	require.NoError(t, err)
	assert.Zero(t, n)
	_, err = a.UpdatePresence(bg, "a", []backplane.PresenceUpdate{{Key: "u:z", Member: "z", Sessions: 1}})
	require.ErrorIs(t, err, backplane.ErrUnavailable, "a lost instance writes nothing")

	refresh(t, a, "a2")
	assert.Equal(t, []backplane.PresenceChange{present("u:x", "x")}, set(t, a, "a2", "u:x", "x", 1))
	keys, err := srv.Client(t).Keys(bg, prefix+"p[kl]:a").Result()
	require.NoError(t, err)
	assert.Empty(t, keys)
}

// TestPresenceCutOff: a node cut off from Redis (connections closed, or
// frozen) for longer than the TTL has its entries removed by the others,
// is told its instance is lost when it is back, and a write it sent while
// cut off is not kept.
func TestPresenceCutOff(t *testing.T) {
	for _, freeze := range []bool{false, true} {
		t.Run(map[bool]string{false: "cut", true: "freeze"}[freeze], func(t *testing.T) {
			srv := redistest.Start(t)
			proxy := redistest.NewProxy(t, srv.Addr())
			prefix := "t" + randomHex() + ":"
			a := newPresenceNode(t, []string{proxy.Addr()}, false, freeze, prefix, presenceTTL)
			b := newPresenceNode(t, []string{srv.Addr()}, false, false, prefix, presenceTTL)
			refresh(t, b, "b")
			rb := startRefresher(t, b, "b")
			refresh(t, a, "a")
			set(t, a, "a", "u:x", "x", 1)

			if freeze {
				proxy.Freeze()
			} else {
				proxy.Cut()
			}
			ctx, cancel := context.WithTimeout(bg, 2*presenceTTL)
			_, err := a.UpdatePresence(ctx, "a", []backplane.PresenceUpdate{{Key: "u:y", Member: "y", Sessions: 1}})
			cancel()
			require.ErrorIs(t, err, backplane.ErrUnavailable, "the write sent while cut off")

			require.Eventually(t, func() bool {
				got, _ := rb.got()
				return len(got) > 0
			}, presenceWait, 10*time.Millisecond)
			rb.halt()
			got, lost := rb.got()
			assert.False(t, lost)
			assert.Equal(t, []backplane.PresenceChange{absent("u:x", "x")}, got)
			_, err = a.UpdatePresence(bg, "a", []backplane.PresenceUpdate{{Key: "u:z", Member: "z", Sessions: 1}})
			require.ErrorIs(t, err, backplane.ErrUnavailable, "the lease ended: refused at once")

			proxy.Heal()
			var r backplane.PresenceRefresh
			require.Eventually(t, func() bool {
				r, err = a.RefreshPresence(bg, "a")
				return err == nil
			}, presenceWait, 10*time.Millisecond, "a reaches Redis again")
			assert.True(t, r.Lost)
			for _, m := range []string{"x", "y", "z"} {
				n, _, err := b.PresenceMember(bg, "u:"+m, m)
				require.NoError(t, err)
				assert.Zero(t, n, m)
			}
			refresh(t, a, "a2")
			assert.Equal(t, []backplane.PresenceChange{present("u:x", "x")}, set(t, a, "a2", "u:x", "x", 1))
		})
	}
}

// TestPresenceCluster runs the record on a Redis Cluster with keys,
// members and instances whose names hold braces: every key of a presence
// key is in one slot, and counts, pages, limits and the removal of a dead
// instance work across masters.
func TestPresenceCluster(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	rc := cl.Client(t)
	prefix := "t" + randomHex() + ":"
	a := newPresenceNode(t, cl.Addrs(), true, false, prefix, presenceTTL) // dies
	b := newPresenceNode(t, cl.Addrs(), true, true, prefix, 10*time.Second)
	c := newPresenceNode(t, cl.Addrs(), true, false, prefix, presenceTTL) // removes a
	instA, instB, instC := "node{1}.a%7D", "node}2.b", "{node3}.c"
	refresh(t, b, instB)

	keys := []string{"t:{room}", "}x", "{", "}", "a}b{c", "u:{}", "plain", "}}{{", "u:%7D"}
	members := []string{"m{1}", "}", "{", "%7D", "x"}
	var ups []backplane.PresenceUpdate
	var want []backplane.PresenceChange
	for _, k := range keys {
		for i, m := range members {
			ups = append(ups, backplane.PresenceUpdate{Key: k, Member: m, Sessions: i + 1})
			want = append(want, present(k, m))
		}
	}
	refresh(t, a, instA)
	ch, err := a.UpdatePresence(bg, instA, ups)
	require.NoError(t, err)
	assert.Equal(t, want, ch)

	escape := strings.NewReplacer("%", "%25", "}", "%7D")
	for _, k := range keys {
		base := prefix + "p{:" + k + "}"
		slot, err := rc.ClusterKeySlot(bg, base).Result()
		require.NoError(t, err)
		for _, name := range []string{base + ":m", base + ":i", base + ":i:" + escape.Replace(instA)} {
			s, err := rc.ClusterKeySlot(bg, name).Result()
			require.NoError(t, err)
			assert.Equal(t, slot, s, "%q and %q", base, name)
			assert.EqualValues(t, 1, rc.Exists(bg, name).Val(), name)
		}
		count, err := b.PresenceCount(bg, k)
		require.NoError(t, err)
		assert.Equal(t, len(members), count, k)
		page := walk(t, b, k, 2)
		got := make([]string, len(page))
		for i, e := range page {
			got[i] = e.Member
		}
		assert.Equal(t, slices.Sorted(slices.Values(members)), got, k)
		for i, m := range members {
			n, insts, err := b.PresenceMember(bg, k, m)
			require.NoError(t, err)
			assert.Equal(t, i+1, n)
			assert.Equal(t, []string{instA}, insts)
		}
	}

	// An entry removed leaves the key in a's key set until a has no entry
	// left in the key.
	refresh(t, a, instA)
	set(t, a, instA, "plain", "x", 0)
	inSet, err := rc.SMembers(bg, prefix+"pk:"+instA).Result()
	require.NoError(t, err)
	assert.ElementsMatch(t, append([]string{""}, keys...), inSet, "every key with an entry, and the marker")
	refresh(t, a, instA)
	for _, m := range members[:len(members)-1] {
		set(t, a, instA, "plain", m, 0)
	}
	inSet, err = rc.SMembers(bg, prefix+"pk:"+instA).Result()
	require.NoError(t, err)
	assert.NotContains(t, inSet, "plain", "a has no entry left in it")

	// A master that lost a's key set (restarted without its data) gets it
	// back at a's next refresh: a's entries can still be removed.
	require.NoError(t, rc.Del(bg, prefix+"pk:"+instA).Err())
	refresh(t, a, instA)
	inSet, err = rc.SMembers(bg, prefix+"pk:"+instA).Result()
	require.NoError(t, err)
	var withEntries []string
	for _, k := range keys {
		if k != "plain" {
			withEntries = append(withEntries, k)
		}
	}
	assert.ElementsMatch(t, append([]string{""}, withEntries...), inSet, "the key set written again")

	assert.Empty(t, set(t, b, instB, "}x", "x", 1))
	_, err = b.UpdatePresence(bg, instB, []backplane.PresenceUpdate{{Key: "}x", Member: "x", Sessions: 2, Limit: 6}})
	require.ErrorIs(t, err, backplane.ErrOverLimit, "5 on a and 2 on b would be 7")
	n, insts, err := b.PresenceMember(bg, "}x", "x")
	require.NoError(t, err)
	assert.Equal(t, 6, n)
	assert.ElementsMatch(t, []string{instA, instB}, insts)

	// a dies: c removes it, across the masters.
	refresh(t, c, instC)
	rcc := startRefresher(t, c, instC)
	require.Eventually(t, func() bool {
		return errors.Is(rc.ZScore(bg, prefix+"pn", instA).Err(), goredis.Nil)
	}, presenceWait, 10*time.Millisecond, "a is removed from the lease set")
	rcc.halt()
	got, lost := rcc.got()
	assert.False(t, lost)
	var gone []backplane.PresenceChange
	for _, k := range keys {
		if k == "plain" {
			continue // left while alive
		}
		for _, m := range members {
			if k == "}x" && m == "x" {
				continue // b holds it
			}
			gone = append(gone, absent(k, m))
		}
	}
	assert.ElementsMatch(t, gone, got)
	n, insts, err = b.PresenceMember(bg, "}x", "x")
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	assert.Equal(t, []string{instB}, insts)
	r, err := a.RefreshPresence(bg, instA)
	require.NoError(t, err)
	assert.True(t, r.Lost)
	for _, k := range []string{prefix + "pk:" + instA, prefix + "pl:" + instA} {
		assert.EqualValues(t, 0, rc.Exists(bg, k).Val(), k)
	}

	// Hundreds of updates over every master in one call, and pages.
	refresh(t, a, "a2")
	ups = ups[:0]
	for i := range 600 {
		ups = append(ups, backplane.PresenceUpdate{Key: "k" + strconv.Itoa(i%37), Member: fmt.Sprintf("m%03d", i), Sessions: 1})
	}
	ch, err = a.UpdatePresence(bg, "a2", ups)
	require.NoError(t, err)
	assert.Len(t, ch, 600)
	total := 0
	for i := range 37 {
		total += len(walk(t, b, "k"+strconv.Itoa(i), 5))
	}
	assert.Equal(t, 600, total)
}

// TestPresenceScriptsLost: after Redis lost its scripts (SCRIPT FLUSH, or a
// restart that kept the data), every call loads them again.
func TestPresenceScriptsLost(t *testing.T) {
	srv := redistest.Start(t)
	rc := srv.Client(t)
	prefix := "t" + randomHex() + ":"
	a := newPresenceNode(t, []string{srv.Addr()}, false, false, prefix, 10*time.Second)
	require.NoError(t, rc.ScriptFlush(bg).Err())
	refresh(t, a, "a")
	require.NoError(t, rc.ScriptFlush(bg).Err())
	var ups []backplane.PresenceUpdate
	for i := range 300 {
		ups = append(ups, backplane.PresenceUpdate{Key: "t:room", Member: strconv.Itoa(i), Sessions: 1})
	}
	ch, err := a.UpdatePresence(bg, "a", ups)
	require.NoError(t, err)
	assert.Len(t, ch, 300)
	require.NoError(t, rc.ScriptFlush(bg).Err())
	n, insts, err := a.PresenceMember(bg, "t:room", "7")
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	assert.Equal(t, []string{"a"}, insts)
	require.NoError(t, rc.ScriptFlush(bg).Err())
	assert.Len(t, walk(t, a, "t:room", 1000), 300)
}

// TestPresenceBadInput: bad arguments and options are refused, a node
// refuses everything after Close, and a node whose Redis is gone says so.
func TestPresenceBadInput(t *testing.T) {
	srv := redistest.Start(t)
	prefix := "t" + randomHex() + ":"
	a := newPresenceNode(t, []string{srv.Addr()}, false, false, prefix, 10*time.Second)

	_, err := a.UpdatePresence(bg, "a", []backplane.PresenceUpdate{{Key: "u:x", Member: "x", Sessions: 1}})
	require.ErrorIs(t, err, backplane.ErrUnavailable, "an instance never refreshed")
	refresh(t, a, "a")
	for name, u := range map[string]backplane.PresenceUpdate{
		"empty key":         {Member: "x", Sessions: 1},
		"empty member":      {Key: "u:x", Sessions: 1},
		"negative sessions": {Key: "u:x", Member: "x", Sessions: -1},
	} {
		_, err := a.UpdatePresence(bg, "a", []backplane.PresenceUpdate{{Key: "u:ok", Member: "ok", Sessions: 1}, u})
		assert.Error(t, err, name)
		if u.Key == "" {
			assert.ErrorIs(t, err, backplane.ErrInvalidChannel, name)
		}
	}
	n, _, err := a.PresenceMember(bg, "u:ok", "ok")
	require.NoError(t, err)
	assert.Zero(t, n, "a call with a bad update applies none")
	_, err = a.UpdatePresence(bg, "", []backplane.PresenceUpdate{{Key: "u:x", Member: "x", Sessions: 1}})
	assert.Error(t, err, "empty instance")
	_, err = a.RefreshPresence(bg, "")
	assert.Error(t, err, "empty instance")
	ch, err := a.UpdatePresence(bg, "a", nil)
	assert.NoError(t, err)
	assert.Empty(t, ch)
	_, err = a.PresenceCount(bg, "")
	assert.ErrorIs(t, err, backplane.ErrInvalidChannel)
	_, _, err = a.PresenceMember(bg, "", "x")
	assert.ErrorIs(t, err, backplane.ErrInvalidChannel)
	_, _, err = a.PresenceMembers(bg, "", "", 10)
	assert.ErrorIs(t, err, backplane.ErrInvalidChannel)

	client := srv.Client(t)
	for name, ttl := range map[string]time.Duration{"negative": -time.Second, "too short": 50 * time.Millisecond} {
		_, err := wsredis.NewPubSub(client, &wsredis.Options{PresenceTTL: ttl})
		assert.ErrorIs(t, err, wsredis.ErrInvalidOptions, name)
		_, err = wsredis.NewStreams(client, &wsredis.StreamsOptions{Options: wsredis.Options{PresenceTTL: ttl}})
		assert.ErrorIs(t, err, wsredis.ErrInvalidOptions, name)
	}

	// Redis is gone.
	gone := newPresenceNode(t, []string{"127.0.0.1:1"}, false, false, prefix, 10*time.Second)
	_, err = gone.RefreshPresence(bg, "g")
	assert.ErrorIs(t, err, backplane.ErrUnavailable)
	_, err = gone.PresenceCount(bg, "u:x")
	assert.ErrorIs(t, err, backplane.ErrUnavailable)
	ctx, cancel := context.WithCancel(bg)
	cancel()
	_, err = a.PresenceCount(ctx, "u:x")
	assert.ErrorIs(t, err, context.Canceled)

	require.NoError(t, a.Close())
	_, err = a.RefreshPresence(bg, "a")
	assert.ErrorIs(t, err, backplane.ErrClosed)
	_, err = a.UpdatePresence(bg, "a", []backplane.PresenceUpdate{{Key: "u:x", Member: "x", Sessions: 1}})
	assert.ErrorIs(t, err, backplane.ErrClosed)
	_, err = a.PresenceCount(bg, "u:x")
	assert.ErrorIs(t, err, backplane.ErrClosed)
	_, _, err = a.PresenceMember(bg, "u:x", "x")
	assert.ErrorIs(t, err, backplane.ErrClosed)
	_, _, err = a.PresenceMembers(bg, "u:x", "", 10)
	assert.ErrorIs(t, err, backplane.ErrClosed)
}

// TestPresenceCloseDuringCalls: Close ends calls in flight (Redis frozen)
// with ErrClosed and returns.
func TestPresenceCloseDuringCalls(t *testing.T) {
	srv := redistest.Start(t)
	proxy := redistest.NewProxy(t, srv.Addr())
	a := newPresenceNode(t, []string{proxy.Addr()}, false, false, "t"+randomHex()+":", 10*time.Second)
	refresh(t, a, "a")
	proxy.Freeze()
	errs := make(chan error, 2)
	go func() {
		_, err := a.UpdatePresence(bg, "a", []backplane.PresenceUpdate{{Key: "u:x", Member: "x", Sessions: 1}})
		errs <- err
	}()
	go func() {
		_, err := a.PresenceCount(bg, "u:x")
		errs <- err
	}()
	// The update's connection was made before the freeze; wait for the
	// count's (whether or not both calls are in flight yet, Close must end
	// them with ErrClosed).
	require.Eventually(t, func() bool { return proxy.Conns() >= 2 }, presenceWait, time.Millisecond)
	require.NoError(t, a.Close())
	for range 2 {
		select {
		case err := <-errs:
			assert.ErrorIs(t, err, backplane.ErrClosed)
		case <-time.After(presenceWait):
			t.Fatal("a call outlived Close")
		}
	}
	proxy.Heal()
}
