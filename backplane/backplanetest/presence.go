package backplanetest

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub/backplane"
)

// The Presence cases run when Features.Presence is set. The suite drives
// the refreshes itself, as a hub does: every instance of a case is
// refreshed whenever its refresh is due (see presEnv.keepAlive), before
// each call the case makes, so an instance dies only when a case stops
// refreshing it on purpose. Calls for one instance are serialized by its
// own mutex, as the contract asks of callers.

// presNode is a started node of a backend that keeps presence.
type presNode struct {
	*node
	p backplane.Presence
}

// asPresence returns bp as a backplane.Presence, failing the case if it is
// not one.
func asPresence(t *testing.T, bp backplane.Backplane) backplane.Presence {
	t.Helper()
	p, ok := bp.(backplane.Presence)
	require.Truef(t, ok, "Features.Presence is set but %T does not implement backplane.Presence", bp)
	return p
}

// presEnv is what a Presence case works with: the env and the instances it
// keeps alive.
type presEnv struct {
	*env
	ttl time.Duration
	// expectRemovals is set by the cases that let an instance die; the
	// others check at their end that no refresh removed anything.
	expectRemovals bool

	mu    sync.Mutex // guards the fields below
	insts []*presInst
	// removed gathers the changes reported by the refreshes of keepAlive.
	removed []backplane.PresenceChange
}

// presInst is one presence instance of a case.
type presInst struct {
	n    *presNode
	name string

	mu sync.Mutex // serializes the calls for the instance; guards the fields below
	// due is when the instance must be refreshed again.
	due time.Time
	// stopped is set when the case stops refreshing the instance.
	stopped bool
}

func newPresEnv(t *testing.T, e *env) *presEnv {
	p := &presEnv{env: e, ttl: e.f.PresenceTTL}
	t.Cleanup(func() {
		if !p.expectRemovals && !t.Failed() {
			assert.Empty(t, p.removedChanges(), "refreshes removed entries, yet every instance was refreshed in time")
		}
	})
	return p
}

// node makes a started node and checks that it implements Presence.
func (p *presEnv) node() *presNode {
	p.t.Helper()
	n := p.env.node()
	return &presNode{node: n, p: asPresence(p.t, n.Backplane)}
}

// nodes makes k started nodes.
func (p *presEnv) nodes(k int) []*presNode {
	p.t.Helper()
	ns := make([]*presNode, k)
	for i := range ns {
		ns[i] = p.node()
	}
	return ns
}

// instance registers a new instance on n with its first refresh, which
// must not report it Lost, and keeps it alive from then on.
func (p *presEnv) instance(n *presNode, name string) *presInst {
	p.t.Helper()
	in := &presInst{n: n, name: name}
	in.mu.Lock()
	err := p.refreshLocked(in)
	in.mu.Unlock()
	require.NoError(p.t, err)
	p.mu.Lock()
	p.insts = append(p.insts, in)
	p.mu.Unlock()
	return in
}

// interval returns how long after a refresh that reported next to refresh
// again: next, and at most a quarter of the time to live, so that a late
// refresh still comes in time.
func (p *presEnv) interval(next time.Duration) time.Duration {
	return max(0, min(next, p.ttl/4))
}

// refreshLocked refreshes in, records what the refresh removed and when to
// refresh again; it fails if the refresh fails or reports in Lost.
// in.mu must be held.
func (p *presEnv) refreshLocked(in *presInst) error {
	r, err := in.n.p.RefreshPresence(p.ctx, in.name)
	switch {
	case err != nil:
		return fmt.Errorf("%s: RefreshPresence(%q): %w", in.n.name, in.name, err)
	case r.Lost:
		return fmt.Errorf("%s: RefreshPresence(%q) reported Lost, yet the instance was refreshed within the time to live", in.n.name, in.name)
	case r.Next < 0 || r.Next >= p.ttl:
		return fmt.Errorf("%s: RefreshPresence(%q) asked for the next refresh after %v, with a time to live of %v", in.n.name, in.name, r.Next, p.ttl)
	}
	in.due = time.Now().Add(p.interval(r.Next))
	if len(r.Changes) > 0 {
		p.mu.Lock()
		p.removed = append(p.removed, r.Changes...)
		p.mu.Unlock()
	}
	return nil
}

// keepAlive refreshes every instance that is due and not stopped. It is
// safe for concurrent use.
func (p *presEnv) keepAlive() error {
	p.mu.Lock()
	insts := slices.Clone(p.insts)
	p.mu.Unlock()
	for _, in := range insts {
		in.mu.Lock()
		var err error
		if !in.stopped && !time.Now().Before(in.due) {
			err = p.refreshLocked(in)
		}
		in.mu.Unlock()
		if err != nil {
			return err
		}
	}
	return nil
}

// alive is keepAlive for the case's goroutine: it fails the case on error.
func (p *presEnv) alive() {
	p.t.Helper()
	require.NoError(p.t, p.keepAlive())
}

// stop makes the case stop refreshing in, as if its node were killed.
func (in *presInst) stop() {
	in.mu.Lock()
	in.stopped = true
	in.mu.Unlock()
}

// removedChanges returns the changes that keepAlive's refreshes reported.
func (p *presEnv) removedChanges() []backplane.PresenceChange {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.removed)
}

// tryUpdate keeps the instances alive, then calls UpdatePresence for in. It
// is safe for concurrent use.
func (p *presEnv) tryUpdate(in *presInst, ups ...backplane.PresenceUpdate) ([]backplane.PresenceChange, error) {
	if err := p.keepAlive(); err != nil {
		return nil, err
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.n.p.UpdatePresence(p.ctx, in.name, ups)
}

// set is tryUpdate for the case's goroutine: it fails the case on error.
func (p *presEnv) set(in *presInst, ups ...backplane.PresenceUpdate) []backplane.PresenceChange {
	p.t.Helper()
	changes, err := p.tryUpdate(in, ups...)
	require.NoError(p.t, err, "%s: UpdatePresence(%q, %v)", in.n.name, in.name, ups)
	return changes
}

// count returns PresenceCount(key) at n.
func (p *presEnv) count(n *presNode, key string) int {
	p.t.Helper()
	p.alive()
	c, err := n.p.PresenceCount(p.ctx, key)
	require.NoError(p.t, err, "%s: PresenceCount(%q)", n.name, key)
	return c
}

// member returns PresenceMember(key, member) at n, its instances sorted.
func (p *presEnv) member(n *presNode, key, member string) (int, []string) {
	p.t.Helper()
	p.alive()
	sessions, insts, err := n.p.PresenceMember(p.ctx, key, member)
	require.NoError(p.t, err, "%s: PresenceMember(%q, %q)", n.name, key, member)
	insts = slices.Clone(insts)
	sort.Strings(insts)
	return sessions, insts
}

// assertMember checks member's sessions in key at n and the instances that
// hold them.
func (p *presEnv) assertMember(n *presNode, key, member string, sessions int, insts ...*presInst) {
	p.t.Helper()
	want := make([]string, len(insts))
	for i, in := range insts {
		want[i] = in.name
	}
	sort.Strings(want)
	gotSessions, gotInsts := p.member(n, key, member)
	assert.Equal(p.t, sessions, gotSessions, "%s: sessions of %q in %q", n.name, member, key)
	if len(want) == 0 {
		assert.Empty(p.t, gotInsts, "%s: instances holding %q in %q", n.name, member, key)
	} else {
		assert.Equal(p.t, want, gotInsts, "%s: instances holding %q in %q", n.name, member, key)
	}
}

// walk reads every page of key at n with limit, calling between (if not
// nil) after each page but the last. It checks that no page is longer than
// the limit (100 for a limit below 1), that members come in strictly
// increasing byte order, each after those of the pages before, and that the
// walk ends (with an empty cursor) within most+2 pages. Without between,
// when the members do not change during the walk, it also checks that a
// non-empty cursor leads to a non-empty page: the page that holds the last
// member comes with the empty cursor.
func (p *presEnv) walk(n *presNode, key string, limit, most int, between func()) []backplane.PresenceEntry {
	p.t.Helper()
	maxPage := limit
	if limit < 1 {
		maxPage = 100
	}
	var (
		all    []backplane.PresenceEntry
		cursor string
	)
	for pages := 1; ; pages++ {
		require.LessOrEqual(p.t, pages, most+2, "%s: walking %q by %d: more pages than members, the cursor does not move on", n.name, key, limit)
		p.alive()
		page, next, err := n.p.PresenceMembers(p.ctx, key, cursor, limit)
		require.NoError(p.t, err, "%s: PresenceMembers(%q, %q, %d)", n.name, key, cursor, limit)
		require.LessOrEqual(p.t, len(page), maxPage, "%s: PresenceMembers(%q, %q, %d): a page over the limit", n.name, key, cursor, limit)
		if between == nil && cursor != "" {
			require.NotEmpty(p.t, page, "%s: PresenceMembers(%q, %q, %d): an empty page after a non-empty cursor; the page before held the last member, so its cursor should have been empty", n.name, key, cursor, limit)
		}
		for _, m := range page {
			if len(all) > 0 {
				require.Greater(p.t, m.Member, all[len(all)-1].Member,
					"%s: walking %q by %d: %q comes after %q, not in byte order or returned twice", n.name, key, limit, m.Member, all[len(all)-1].Member)
			}
			all = append(all, m)
		}
		if next == "" {
			return all
		}
		if between != nil {
			between()
		}
		cursor = next
	}
}

func up(key, member string, sessions int) backplane.PresenceUpdate {
	return backplane.PresenceUpdate{Key: key, Member: member, Sessions: sessions}
}

func upLimit(key, member string, sessions, limit int) backplane.PresenceUpdate {
	return backplane.PresenceUpdate{Key: key, Member: member, Sessions: sessions, Limit: limit}
}

func joined(key, member string) backplane.PresenceChange {
	return backplane.PresenceChange{Key: key, Member: member, Present: true}
}

func left(key, member string) backplane.PresenceChange {
	return backplane.PresenceChange{Key: key, Member: member, Present: false}
}

// assertChanges checks that got holds exactly want, in any order.
func assertChanges(t *testing.T, want, got []backplane.PresenceChange, what string, args ...any) {
	t.Helper()
	if len(want) == 0 {
		assert.Empty(t, got, append([]any{what + ": changes"}, args...)...)
		return
	}
	assert.ElementsMatch(t, want, got, append([]any{what + ": changes"}, args...)...)
}

// pause waits for d while keeping the instances alive.
func (p *presEnv) pause(d time.Duration) {
	p.t.Helper()
	end := time.Now().Add(d)
	for {
		p.alive()
		left := time.Until(end)
		if left <= 0 {
			return
		}
		p.sleep(min(left, p.tick()))
	}
}

// tick is the step of the suite's polling loops.
func (p *presEnv) tick() time.Duration {
	return max(p.ttl/20, 5*time.Millisecond)
}

// sleep waits for d, or fails the case when its context ends.
func (p *presEnv) sleep(d time.Duration) {
	p.t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-p.ctx.Done():
		require.FailNow(p.t, "case canceled")
	}
}

// testPresenceUpdateRead: what instances write is read back by every node:
// counts, sessions summed across instances (two of them on one node), the
// instances holding a member, and a page.
func testPresenceUpdateRead(t *testing.T, e *env) {
	const key, other = "t:presence-read", "u:carol"
	p := newPresEnv(t, e)
	ns := p.nodes(3)
	a1 := p.instance(ns[0], "read-a1")
	a2 := p.instance(ns[0], "read-a2") // a second instance on the same node
	b := p.instance(ns[1], "read-b")

	assert.Zero(t, p.count(ns[2], key), "count of a key nobody wrote")
	p.assertMember(ns[2], key, "alice", 0)

	p.set(a1, up(key, "alice", 2))
	p.set(a2, up(key, "alice", 1))
	p.set(b, up(key, "alice", 3), up(key, "bob", 1), up(other, "carol", 1))

	for _, n := range ns {
		assert.Equal(t, 2, p.count(n, key), "%s: count of %q", n.name, key)
		assert.Equal(t, 1, p.count(n, other), "%s: count of %q", n.name, other)
		p.assertMember(n, key, "alice", 6, a1, a2, b)
		p.assertMember(n, key, "bob", 1, b)
		p.assertMember(n, other, "carol", 1, b)
		p.assertMember(n, key, "carol", 0) // another key's member
		p.assertMember(n, key, "nobody", 0)
		assert.Equal(t, []backplane.PresenceEntry{{Member: "alice", Sessions: 6}, {Member: "bob", Sessions: 1}},
			p.walk(n, key, 10, 2, nil), "%s: members of %q", n.name, key)
	}

	// An instance changes its own count; another removes its entry.
	p.set(a1, up(key, "alice", 5))
	p.assertMember(ns[2], key, "alice", 9, a1, a2, b)
	p.set(b, up(key, "alice", 0))
	p.assertMember(ns[2], key, "alice", 6, a1, a2)
	p.set(a1, up(key, "alice", 0))
	p.set(a2, up(key, "alice", 0), up(key, "bob", 0)) // bob is b's: a2 has none to remove
	p.assertMember(ns[2], key, "alice", 0)
	p.assertMember(ns[2], key, "bob", 1, b)
	assert.Equal(t, 1, p.count(ns[2], key), "count of %q", key)
	assert.Equal(t, []backplane.PresenceEntry{{Member: "bob", Sessions: 1}}, p.walk(ns[1], key, 0, 1, nil), "members of %q", key)
}

// testPresenceChanges: Present:true is reported when a member gets its
// first session anywhere in the cluster, Present:false when it loses its
// last, and nothing for the other changes of an instance's own count.
func testPresenceChanges(t *testing.T, e *env) {
	const key, other = "t:presence-changes", "t:presence-changes-2"
	p := newPresEnv(t, e)
	ns := p.nodes(2)
	a := p.instance(ns[0], "changes-a")
	c := p.instance(ns[0], "changes-c") // same node as a
	b := p.instance(ns[1], "changes-b")

	steps := []struct {
		in   *presInst
		ups  []backplane.PresenceUpdate
		want []backplane.PresenceChange
		what string
	}{
		{a, []backplane.PresenceUpdate{up(key, "alice", 1)}, []backplane.PresenceChange{joined(key, "alice")}, "first session"},
		{b, []backplane.PresenceUpdate{up(key, "alice", 2)}, nil, "another instance joins a present member"},
		{a, []backplane.PresenceUpdate{up(key, "alice", 3)}, nil, "an instance raises its own count"},
		{a, []backplane.PresenceUpdate{up(key, "alice", 0)}, nil, "an instance leaves, another still holds the member"},
		{b, []backplane.PresenceUpdate{up(key, "alice", 1)}, nil, "the last instance lowers its count"},
		{b, []backplane.PresenceUpdate{up(key, "alice", 0)}, []backplane.PresenceChange{left(key, "alice")}, "last session"},
		{c, []backplane.PresenceUpdate{up(key, "alice", 1)}, []backplane.PresenceChange{joined(key, "alice")}, "a member joins again"},
		{a, []backplane.PresenceUpdate{up(key, "alice", 1)}, nil, "a second instance of the same node"},
		{c, []backplane.PresenceUpdate{up(key, "alice", 0)}, nil, "one of two instances of a node leaves"},
		{a, []backplane.PresenceUpdate{up(key, "alice", 0)}, []backplane.PresenceChange{left(key, "alice")}, "the other leaves"},
		{a, []backplane.PresenceUpdate{up(key, "alice", 1), up(key, "bob", 1), up(other, "alice", 1)},
			[]backplane.PresenceChange{joined(key, "alice"), joined(key, "bob"), joined(other, "alice")}, "several keys in one call"},
		{b, []backplane.PresenceUpdate{up(other, "alice", 1), up(key, "bob", 4)}, nil, "nothing new in one call"},
		{a, []backplane.PresenceUpdate{up(key, "alice", 0), up(key, "bob", 2), up(other, "alice", 0)},
			[]backplane.PresenceChange{left(key, "alice")}, "one key of a member empties, not the other"},
		{c, []backplane.PresenceUpdate{up(key, "dave", 1), up(key, "dave", 0)},
			[]backplane.PresenceChange{joined(key, "dave"), left(key, "dave")}, "join and leave in one call"},
		{b, []backplane.PresenceUpdate{up(key, "bob", 0), up(other, "alice", 0)}, []backplane.PresenceChange{left(other, "alice")}, "a still holds bob"},
		{a, []backplane.PresenceUpdate{up(key, "bob", 0)}, []backplane.PresenceChange{left(key, "bob")}, "the last one"},
	}
	for i, s := range steps {
		got := p.set(s.in, s.ups...)
		assertChanges(t, s.want, got, "step %d (%s), %s: UpdatePresence(%v)", i, s.what, s.in.name, s.ups)
	}
	assert.Zero(t, p.count(ns[1], key), "count of %q at the end", key)
	assert.Zero(t, p.count(ns[1], other), "count of %q at the end", other)
}

// testPresenceIdempotent: an update that sets what is already set changes
// nothing, and a count of 0 removes only the instance's own entry.
func testPresenceIdempotent(t *testing.T, e *env) {
	const key = "t:presence-idempotent"
	p := newPresEnv(t, e)
	ns := p.nodes(2)
	a := p.instance(ns[0], "idem-a")
	b := p.instance(ns[1], "idem-b")

	assertChanges(t, []backplane.PresenceChange{joined(key, "alice")}, p.set(a, up(key, "alice", 2)), "first update")
	assertChanges(t, nil, p.set(a, up(key, "alice", 2)), "the same update again")
	assertChanges(t, nil, p.set(a, up(key, "alice", 2), up(key, "alice", 2)), "the same update twice in one call")
	p.assertMember(ns[1], key, "alice", 2, a)

	p.set(b, up(key, "alice", 1))
	assertChanges(t, nil, p.set(a, up(key, "alice", 2)), "the same update after another instance's")
	p.assertMember(ns[1], key, "alice", 3, a, b)

	assertChanges(t, nil, p.set(a, up(key, "bob", 0)), "removing an entry that does not exist")
	assert.Equal(t, 1, p.count(ns[1], key), "count after removing an entry that does not exist")

	assertChanges(t, nil, p.set(a, up(key, "alice", 0)), "a leaves")
	assertChanges(t, nil, p.set(a, up(key, "alice", 0)), "a leaves again")
	p.assertMember(ns[0], key, "alice", 1, b)
	assertChanges(t, []backplane.PresenceChange{left(key, "alice")}, p.set(b, up(key, "alice", 0)), "b leaves")
	assertChanges(t, nil, p.set(b, up(key, "alice", 0)), "b leaves again")
	assert.Zero(t, p.count(ns[0], key), "count at the end")
}

// pagingMembers returns 260 distinct members whose byte order differs from
// their numeric and case-folded order, with bytes that a store's range
// syntax or encoding may mistake: brackets, signs, NUL, 0xff, UTF-8.
func pagingMembers() []string {
	ms := make([]string, 0, 260)
	for i := range 240 {
		ms = append(ms, fmt.Sprintf("m%d", i))
	}
	ms = append(ms, "A", "Z", "a", "z", "é", "ß", "\xff", "a\x00b", " lead", "a b",
		"[", "(", "-", "+", "*", "u:colon", "\\", "0", "~", "Ω")
	return ms
}

// testPresencePaging: more than two pages of members come back page by
// page, each exactly once, in byte order, with their sessions; no page is
// over the limit; the cursor is empty after the last page; a member present
// for the whole walk is returned once while others join and leave.
func testPresencePaging(t *testing.T, e *env) {
	const key, empty = "t:presence-paging", "t:presence-paging-empty"
	p := newPresEnv(t, e)
	ns := p.nodes(3)
	insts := []*presInst{
		p.instance(ns[0], "paging-a"),
		p.instance(ns[0], "paging-a2"),
		p.instance(ns[1], "paging-b"),
	}
	members := pagingMembers()
	want := make(map[string]int, len(members))
	batches := make([][]backplane.PresenceUpdate, len(insts))
	for i, m := range members {
		s := i%4 + 1
		batches[i%3] = append(batches[i%3], up(key, m, s))
		want[m] += s
		if i%7 == 0 { // a second instance holds it too
			batches[(i+1)%3] = append(batches[(i+1)%3], up(key, m, 1))
			want[m]++
		}
	}
	require.Len(t, want, len(members), "pagingMembers returned duplicates")
	for i, in := range insts {
		for len(batches[i]) > 0 {
			k := min(50, len(batches[i]))
			p.set(in, batches[i][:k]...)
			batches[i] = batches[i][k:]
		}
	}
	sorted := slices.Clone(members)
	sort.Strings(sorted)
	wantEntries := make([]backplane.PresenceEntry, len(sorted))
	for i, m := range sorted {
		wantEntries[i] = backplane.PresenceEntry{Member: m, Sessions: want[m]}
	}

	assert.Equal(t, len(members), p.count(ns[2], key), "count")
	for _, limit := range []int{100, 0, 7, 1, 1000} {
		got := p.walk(ns[2], key, limit, len(members), nil)
		assert.Equal(t, wantEntries, got, "walk by %d", limit)
	}

	got := p.walk(ns[2], empty, 100, 0, nil)
	assert.Empty(t, got, "walk of a key without members")

	// Others join and leave during a walk: churn names sort among the
	// stable ones.
	churn := insts[2]
	var prev string
	step := 0
	got = p.walk(ns[1], key, 10, 3*len(members), func() {
		step++
		name := fmt.Sprintf("m%d-churn", (step*37)%240)
		p.set(churn, up(key, name, 1))
		if prev != "" {
			p.set(churn, up(key, prev, 0))
		}
		prev = name
	})
	var stable []backplane.PresenceEntry
	for _, m := range got {
		if _, ok := want[m.Member]; ok {
			stable = append(stable, m)
		}
	}
	assert.Equal(t, wantEntries, stable, "walk by 10 while other members join and leave")
}

// testPresenceLimit: an update that would raise a member over its Limit is
// refused with ErrOverLimit while the other updates of the call are
// applied and their changes returned; lowering is never refused; of
// instances racing for the last place, exactly one gets it.
func testPresenceLimit(t *testing.T, e *env) {
	const key, other = "t:presence-limit", "t:presence-limit-2"
	p := newPresEnv(t, e)
	ns := p.nodes(3)
	a := p.instance(ns[0], "limit-a")
	b := p.instance(ns[1], "limit-b")
	reader := ns[2]

	assertChanges(t, []backplane.PresenceChange{joined(key, "alice")}, p.set(a, upLimit(key, "alice", 2, 3)), "a raises alice to 2 of 3")
	assertChanges(t, nil, p.set(b, upLimit(key, "alice", 1, 3)), "b raises alice to 3 of 3: up to the limit")
	_, err := p.tryUpdate(b, upLimit(key, "alice", 2, 3))
	assert.ErrorIs(t, err, backplane.ErrOverLimit, "b raises alice to 4 of 3")
	p.assertMember(reader, key, "alice", 3, a, b)

	// One refused update among others.
	changes, err := p.tryUpdate(b, upLimit(key, "alice", 2, 3), up(key, "bob", 1), upLimit(other, "alice", 1, 1))
	assert.ErrorIs(t, err, backplane.ErrOverLimit, "a call with one update over its limit")
	assertChanges(t, []backplane.PresenceChange{joined(key, "bob"), joined(other, "alice")}, changes, "the updates of the call that were applied")
	p.assertMember(reader, key, "alice", 3, a, b)
	p.assertMember(reader, key, "bob", 1, b)
	p.assertMember(reader, other, "alice", 1, b)

	// A refused update of a new member leaves no trace.
	changes, err = p.tryUpdate(a, upLimit(key, "zed", 2, 1))
	assert.ErrorIs(t, err, backplane.ErrOverLimit, "a new member over its limit")
	assert.Empty(t, changes, "changes of a refused update")
	p.assertMember(reader, key, "zed", 0)
	assert.Equal(t, 2, p.count(reader, key), "count after a refused update")

	// Lowering, or setting what is set, is never refused, even above the
	// limit.
	assertChanges(t, nil, p.set(b, upLimit(key, "alice", 1, 1)), "b sets its count again, the total above the limit")
	assertChanges(t, nil, p.set(a, upLimit(key, "alice", 1, 1)), "a lowers alice to 2 of 1")
	p.assertMember(reader, key, "alice", 2, a, b)
	assertChanges(t, nil, p.set(a, upLimit(key, "alice", 0, 1)), "a removes its entry, the total above the limit")
	p.assertMember(reader, key, "alice", 1, b)
	assertChanges(t, nil, p.set(b, upLimit(key, "alice", 50, 0)), "no limit")
	p.assertMember(reader, key, "alice", 50, b)

	// Races for the last place, on three nodes, two racers on one of them.
	racers := []*presInst{
		p.instance(ns[0], "limit-r0"),
		p.instance(ns[0], "limit-r1"),
		p.instance(ns[1], "limit-r2"),
		p.instance(ns[2], "limit-r3"),
	}
	const rounds = 20
	for round := range rounds {
		member := fmt.Sprintf("seat-%02d", round)
		base := 2 * (round % 2) // every other round, a holds two sessions already
		if base > 0 {
			p.set(a, up(key, member, base))
		}
		p.alive()
		errs := make([]error, len(racers))
		got := make([][]backplane.PresenceChange, len(racers))
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i, r := range racers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				r.mu.Lock()
				defer r.mu.Unlock()
				got[i], errs[i] = r.n.p.UpdatePresence(p.ctx, r.name, []backplane.PresenceUpdate{upLimit(key, member, 1, base+1)})
			}()
		}
		close(start)
		wg.Wait()
		var winners []*presInst
		var joins int
		for i, err := range errs {
			if err == nil {
				winners = append(winners, racers[i])
			} else {
				require.ErrorIs(t, err, backplane.ErrOverLimit, "round %d: %s", round, racers[i].name)
			}
			for _, c := range got[i] {
				require.Equal(t, joined(key, member), c, "round %d: a change reported to %s", round, racers[i].name)
				joins++
			}
		}
		require.Len(t, winners, 1, "round %d: racers for the last place of %q that got it", round, member)
		if base == 0 {
			require.Equal(t, 1, joins, "round %d: Present:true reported for %q", round, member)
			p.assertMember(reader, key, member, 1, winners[0])
		} else {
			require.Zero(t, joins, "round %d: Present:true reported for %q, which a held", round, member)
			p.assertMember(reader, key, member, base+1, a, winners[0])
		}
	}
}

// testPresenceNeedsRefresh: UpdatePresence for an instance that was never
// refreshed is refused with ErrUnavailable and keeps nothing, even when
// another instance of the same node is alive.
func testPresenceNeedsRefresh(t *testing.T, e *env) {
	const key = "t:presence-needs-refresh"
	p := newPresEnv(t, e)
	ns := p.nodes(2)
	const name = "needs-refresh"
	_, err := ns[0].p.UpdatePresence(p.ctx, name, []backplane.PresenceUpdate{up(key, "alice", 1)})
	assert.ErrorIs(t, err, backplane.ErrUnavailable, "UpdatePresence before RefreshPresence")
	assert.Zero(t, p.count(ns[1], key), "count after a refused update")
	p.assertMember(ns[1], key, "alice", 0)

	p.instance(ns[0], "needs-refresh-other") // alive, on the same node
	_, err = ns[0].p.UpdatePresence(p.ctx, name, []backplane.PresenceUpdate{up(key, "alice", 1)})
	assert.ErrorIs(t, err, backplane.ErrUnavailable, "UpdatePresence before RefreshPresence, another instance of the node alive")

	in := p.instance(ns[0], name)
	p.assertMember(ns[1], key, "alice", 0) // the refused update was not kept for later
	assertChanges(t, []backplane.PresenceChange{joined(key, "alice")}, p.set(in, up(key, "alice", 1)), "update after the first refresh")
	p.assertMember(ns[1], key, "alice", 1, in)
}

// testPresenceExpiry: instances refreshed in time stay alive; once one
// stops refreshing, the refreshes of the others remove its entries within
// a bound derived from the time to live, and report Present:false, once,
// for the members only it held; its own next refresh reports Lost, it stays
// dead and keeps nothing it writes; a new instance of its node works.
func testPresenceExpiry(t *testing.T, e *env) {
	const key, other = "t:presence-expiry", "u:carol"
	p := newPresEnv(t, e)
	p.expectRemovals = true
	ns := p.nodes(3)
	a := p.instance(ns[0], "expiry-a")
	sib := p.instance(ns[0], "expiry-a-sibling") // same node as a, refreshed throughout
	b := p.instance(ns[1], "expiry-b")
	reader := ns[2]

	p.set(a, up(key, "alice", 2), up(key, "bob", 1), up(other, "carol", 1))
	p.set(b, up(key, "bob", 3), up(key, "dave", 1))
	p.set(sib, up(key, "erin", 1))

	// Refreshed in time, every instance lives on.
	p.pause(2 * p.ttl)
	assert.Empty(t, p.removedChanges(), "refreshes removed entries, yet every instance was refreshed in time")
	assert.Equal(t, 4, p.count(reader, key), "count while every instance is refreshed")
	p.assertMember(reader, key, "bob", 4, a, b)

	// a stops refreshing.
	a.stop()
	bound := 4*p.ttl + 2*time.Second
	deadline := time.Now().Add(bound)
	for {
		alice, _ := p.member(reader, key, "alice")
		bob, bobInsts := p.member(reader, key, "bob")
		carol := p.count(reader, other)
		if alice == 0 && carol == 0 && bob == 3 && len(bobInsts) == 1 {
			break
		}
		require.True(t, time.Now().Before(deadline),
			"%v after a stopped refreshing (time to live %v), its entries are still there: alice %d, carol's key %d members, bob %d sessions in %v",
			bound, p.ttl, alice, carol, bob, bobInsts)
		p.sleep(p.tick())
	}
	assert.Equal(t, 3, p.count(reader, key), "count once a's entries are removed")
	p.assertMember(reader, key, "bob", 3, b)
	p.assertMember(reader, key, "erin", 1, sib)
	p.assertMember(reader, other, "carol", 0)
	assert.Equal(t, []backplane.PresenceEntry{{Member: "bob", Sessions: 3}, {Member: "dave", Sessions: 1}, {Member: "erin", Sessions: 1}},
		p.walk(reader, key, 2, 3, nil), "members once a's entries are removed")

	// Refreshes go on: nothing is reported twice.
	p.pause(p.ttl + p.tick())
	assertChanges(t, []backplane.PresenceChange{left(key, "alice"), left(other, "carol")}, p.removedChanges(),
		"refreshes of the live instances after a stopped")

	// a is dead, and stays so.
	for i := range 2 {
		r, err := a.n.p.RefreshPresence(p.ctx, a.name)
		require.NoError(t, err, "refresh %d of the dead instance", i+1)
		assert.True(t, r.Lost, "refresh %d of the dead instance reports Lost", i+1)
	}
	_, err := a.n.p.UpdatePresence(p.ctx, a.name, []backplane.PresenceUpdate{up(key, "frank", 1), up(key, "bob", 5)})
	assert.ErrorIs(t, err, backplane.ErrUnavailable, "UpdatePresence of the dead instance")
	p.assertMember(reader, key, "frank", 0)
	p.assertMember(reader, key, "bob", 3, b)
	assert.Equal(t, 3, p.count(reader, key), "count after the dead instance's update")

	// A new instance of a's node starts afresh.
	a2 := p.instance(ns[0], "expiry-a2")
	assertChanges(t, []backplane.PresenceChange{joined(key, "alice")}, p.set(a2, up(key, "alice", 1)), "a2 writes alice")
	assertChanges(t, nil, p.set(a2, up(key, "bob", 1)), "a2 writes bob")
	p.assertMember(reader, key, "alice", 1, a2)
	p.assertMember(reader, key, "bob", 4, a2, b)
	assert.Len(t, p.removedChanges(), 2, "changes reported by refreshes at the end")
}

// testPresenceConcurrentUpdaters: instances on several nodes change the
// sessions of one member concurrently, each of a member of its own too,
// while others read: the Present:true and Present:false changes of the
// shared member balance, those of each private member alternate.
func testPresenceConcurrentUpdaters(t *testing.T, e *env) {
	const key = "t:presence-concurrent"
	const iterations = 150
	p := newPresEnv(t, e)
	ns := p.nodes(3)
	insts := []*presInst{
		p.instance(ns[0], "conc-a"),
		p.instance(ns[0], "conc-a2"),
		p.instance(ns[1], "conc-b"),
		p.instance(ns[2], "conc-c"),
	}
	pattern := []int{1, 2, 0, 3, 1, 0, 0}
	results := make([][]backplane.PresenceChange, len(insts))
	done := make(chan struct{})
	var readers, writers sync.WaitGroup
	readers.Add(1)
	go func() { // a reader on another node, for the race detector and sanity
		defer readers.Done()
		n := ns[2]
		for {
			select {
			case <-done:
				return
			default:
			}
			c, err := n.p.PresenceCount(p.ctx, key)
			if !assert.NoError(t, err, "PresenceCount") || !assert.LessOrEqual(t, c, 1+len(insts), "count") {
				return
			}
			s, _, err := n.p.PresenceMember(p.ctx, key, "shared")
			if !assert.NoError(t, err, "PresenceMember") || !assert.GreaterOrEqual(t, s, 0, "sessions") {
				return
			}
			if _, _, err := n.p.PresenceMembers(p.ctx, key, "", 2); !assert.NoError(t, err, "PresenceMembers") {
				return
			}
		}
	}()
	for i, in := range insts {
		writers.Add(1)
		go func() {
			defer writers.Done()
			private := "private-" + in.name
			for j := range iterations {
				s := pattern[(i+j)%len(pattern)]
				if j == iterations-1 {
					s = 0
				}
				changes, err := p.tryUpdate(in, up(key, "shared", s), up(key, private, s))
				if !assert.NoError(t, err, "%s: update %d", in.name, j) {
					return
				}
				results[i] = append(results[i], changes...)
			}
		}()
	}
	writers.Wait()
	close(done)
	readers.Wait()
	if t.Failed() {
		return
	}

	var shared []backplane.PresenceChange
	for i, in := range insts {
		private := "private-" + in.name
		present := false
		for k, c := range results[i] {
			if c.Member != private {
				shared = append(shared, c)
				continue
			}
			require.NotEqual(t, present, c.Present, "%s: change %d of %q repeats Present:%v", in.name, k, private, c.Present)
			present = c.Present
		}
		require.False(t, present, "%s: %q was left present", in.name, private)
	}
	ups, downs := 0, 0
	for _, c := range shared {
		require.Equal(t, key, c.Key, "key of a change")
		require.Equal(t, "shared", c.Member, "member of a change")
		if c.Present {
			ups++
		} else {
			downs++
		}
	}
	assert.Positive(t, ups, "Present:true changes of the shared member")
	assert.Equal(t, ups, downs, "Present:true and Present:false changes of the shared member, which ended with no session")
	p.assertMember(ns[1], key, "shared", 0)
	assert.Zero(t, p.count(ns[1], key), "count at the end")
}

// testPresenceBadInput: an empty key is refused with ErrInvalidChannel by
// every method, a negative count with an error; the node still works.
func testPresenceBadInput(t *testing.T, e *env) {
	p := newPresEnv(t, e)
	n := p.node()
	in := p.instance(n, "bad-input")
	ctx := p.ctx

	_, err := p.tryUpdate(in, up("", "alice", 1))
	assert.ErrorIs(t, err, backplane.ErrInvalidChannel, "UpdatePresence with an empty key")
	_, err = p.tryUpdate(in, up("t:bad", "neg", -1))
	assert.Error(t, err, "UpdatePresence with negative sessions")
	_, err = n.p.PresenceCount(ctx, "")
	assert.ErrorIs(t, err, backplane.ErrInvalidChannel, "PresenceCount of an empty key")
	_, _, err = n.p.PresenceMember(ctx, "", "alice")
	assert.ErrorIs(t, err, backplane.ErrInvalidChannel, "PresenceMember of an empty key")
	_, _, err = n.p.PresenceMembers(ctx, "", "", 10)
	assert.ErrorIs(t, err, backplane.ErrInvalidChannel, "PresenceMembers of an empty key")

	p.assertMember(n, "t:bad", "neg", 0)
	assertChanges(t, []backplane.PresenceChange{joined("t:bad", "ok")}, p.set(in, up("t:bad", "ok", 1)), "a valid update")
	p.assertMember(n, "t:bad", "ok", 1, in)
}

// testPresenceClosed: after Close every presence method fails with
// ErrClosed, on a node that was started and on one that was not.
func testPresenceClosed(t *testing.T, e *env) {
	const key = "t:presence-closed"
	p := newPresEnv(t, e)
	ns := p.nodes(2)
	in := p.instance(ns[0], "closed-a")
	p.set(in, up(key, "alice", 1))
	in.stop()
	require.NoError(t, ns[0].Close(), "Close")
	assertPresenceClosed(t, p.ctx, ns[0].p, in.name, key)

	bp := e.makeRaw()
	require.NoError(t, bp.Close(), "Close before Start")
	assertPresenceClosed(t, p.ctx, asPresence(t, bp), in.name, key)

	// The other node still works.
	assert.Equal(t, 1, p.count(ns[1], key), "count at another node")
}

func assertPresenceClosed(t *testing.T, ctx context.Context, pr backplane.Presence, instance, key string) {
	t.Helper()
	_, err := pr.RefreshPresence(ctx, instance)
	assert.ErrorIs(t, err, backplane.ErrClosed, "RefreshPresence after Close")
	_, err = pr.RefreshPresence(ctx, "closed-new")
	assert.ErrorIs(t, err, backplane.ErrClosed, "RefreshPresence of a new instance after Close")
	_, err = pr.UpdatePresence(ctx, instance, []backplane.PresenceUpdate{up(key, "alice", 2)})
	assert.ErrorIs(t, err, backplane.ErrClosed, "UpdatePresence after Close")
	_, err = pr.PresenceCount(ctx, key)
	assert.ErrorIs(t, err, backplane.ErrClosed, "PresenceCount after Close")
	_, _, err = pr.PresenceMember(ctx, key, "alice")
	assert.ErrorIs(t, err, backplane.ErrClosed, "PresenceMember after Close")
	_, _, err = pr.PresenceMembers(ctx, key, "", 10)
	assert.ErrorIs(t, err, backplane.ErrClosed, "PresenceMembers after Close")
}
