package memory

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/wshub/wshub/backplane"
)

var _ backplane.Presence = (*Node)(nil)

// DefaultPresenceTTL is the time to live of a presence instance on a bus
// whose SetPresenceTTL was not called: an instance that is not refreshed
// for longer is taken for dead. RefreshPresence asks for the next refresh
// after a third of it.
const DefaultPresenceTTL = 10 * time.Second

// defaultPresencePage is the page size of PresenceMembers for a limit
// below 1.
const defaultPresencePage = 100

// SetPresenceTTL sets the time to live of the bus's presence instances
// (see backplane.Presence); it must be positive, and is DefaultPresenceTTL
// until it is set. It applies at once to every instance, those refreshed
// before included: lowering it can make instances dead at once, to be
// removed by the next RefreshPresence of a live one. RefreshPresence then
// asks for a refresh after a third of d.
func (b *Bus) SetPresenceTTL(d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("memory: presence time to live %v is not positive", d)
	}
	s := &b.presence
	s.mu.Lock()
	s.ttl = d
	s.mu.Unlock()
	return nil
}

// DropPresence makes the bus lose every presence entry and instance, as a
// Redis restarted without persistence does: counts and pages are empty at
// once, no change is reported for what was lost, and the next
// RefreshPresence of every instance that was alive reports Lost.
func (b *Bus) DropPresence() {
	s := &b.presence
	s.mu.Lock()
	defer s.mu.Unlock()
	for name := range s.instances {
		s.markDeadLocked(name)
	}
	s.instances = nil
	s.keys = nil
}

// presenceStore is the presence of a bus, shared by its nodes: every
// instance with its entries, and for every key its members in a map (for
// counts and lookups) and in a memberSet (for pages in byte order). The
// zero presenceStore is empty, with the default time to live.
type presenceStore struct {
	// mu guards the fields below. It is never held while another lock of
	// the bus is taken, nor taken while one is held.
	mu  sync.RWMutex
	ttl time.Duration // 0 means DefaultPresenceTTL
	// instances holds the instances that were registered and not removed
	// yet, those whose lease ran out included.
	instances map[string]*presInstance
	// dead holds the names of the instances taken for dead, so that they
	// stay dead: a name is never registered again.
	dead map[string]struct{}
	// keys holds the keys that have a member; a key is deleted with its
	// last member.
	keys map[string]*presKey
}

// presInstance is one instance and what it wrote.
type presInstance struct {
	name string
	// last is the Bus.now time of its latest refresh.
	last int64
	// entries holds its sessions per key and member, never 0.
	entries map[presSlot]int
}

// presSlot names an entry of an instance.
type presSlot struct{ key, member string }

// presKey is one key with at least one member.
type presKey struct {
	members map[string]*presMember
	order   memberSet // the names of members
}

// presMember is one member of a key: its sessions across the cluster, never
// 0, and the instances that hold them with their own sessions.
type presMember struct {
	sessions int
	holders  map[string]int
}

// ttlLocked returns the time to live. s.mu must be held.
func (s *presenceStore) ttlLocked() time.Duration {
	if s.ttl == 0 {
		return DefaultPresenceTTL
	}
	return s.ttl
}

// liveLocked returns the named instance if it was refreshed within the time
// to live at now, or nil. s.mu must be held.
func (s *presenceStore) liveLocked(name string, now int64) *presInstance {
	in := s.instances[name]
	if in == nil || now-in.last > int64(s.ttlLocked()) {
		return nil
	}
	return in
}

// markDeadLocked records that the named instance is dead. s.mu must be held
// for writing.
func (s *presenceStore) markDeadLocked(name string) {
	if s.dead == nil {
		s.dead = make(map[string]struct{})
	}
	s.dead[name] = struct{}{}
}

// refreshPresence renews instance's lease, registering it on its first call, and
// removes the entries of the instances whose lease ran out. An instance
// that is dead, or whose own lease ran out, is reported Lost; such a
// refresh removes nothing, so that every change is reported to a caller
// that goes on: the first refresh of the caller's next instance removes the
// dead one.
func (b *Bus) refreshPresence(instance string) backplane.PresenceRefresh {
	s := &b.presence
	s.mu.Lock()
	defer s.mu.Unlock()
	now := b.now()
	r := backplane.PresenceRefresh{Next: s.ttlLocked() / 3}
	if _, dead := s.dead[instance]; dead {
		r.Lost = true
		return r
	}
	in := s.instances[instance]
	switch {
	case in == nil:
		if s.instances == nil {
			s.instances = make(map[string]*presInstance)
		}
		in = &presInstance{name: instance, entries: make(map[presSlot]int)}
		s.instances[instance] = in
	case s.liveLocked(instance, now) == nil:
		r.Lost = true
		return r
	}
	in.last = now
	r.Changes = s.reapLocked(now)
	return r
}

// reapLocked removes the instances whose lease ran out at now and their
// entries, and returns what that changed. s.mu must be held for writing.
func (s *presenceStore) reapLocked(now int64) []backplane.PresenceChange {
	var changes []backplane.PresenceChange
	for name, in := range s.instances {
		if s.liveLocked(name, now) != nil {
			continue
		}
		for slot := range in.entries {
			if c, ok, _ := s.setLocked(in, backplane.PresenceUpdate{Key: slot.key, Member: slot.member}); ok {
				changes = append(changes, c)
			}
		}
		delete(s.instances, name)
		s.markDeadLocked(name)
	}
	return changes
}

// updatePresence applies updates for instance in order. It returns the changes of
// those it applied, and an error wrapping backplane.ErrOverLimit if a Limit
// refused some; it applies nothing, and returns an error wrapping
// backplane.ErrUnavailable, if instance is not alive.
func (b *Bus) updatePresence(instance string, updates []backplane.PresenceUpdate) ([]backplane.PresenceChange, error) {
	s := &b.presence
	s.mu.Lock()
	defer s.mu.Unlock()
	in := s.liveLocked(instance, b.now())
	if in == nil {
		why := "was not refreshed within the time to live"
		if _, dead := s.dead[instance]; dead {
			why = "was taken for dead"
		}
		return nil, fmt.Errorf("memory: presence instance %q %s: %w", instance, why, backplane.ErrUnavailable)
	}
	var (
		changes []backplane.PresenceChange
		refused []backplane.PresenceUpdate
	)
	for _, u := range updates {
		c, changed, ok := s.setLocked(in, u)
		switch {
		case !ok:
			refused = append(refused, u)
		case changed:
			changes = append(changes, c)
		}
	}
	if len(refused) == 0 {
		return changes, nil
	}
	u := refused[0]
	more := ""
	if len(refused) > 1 {
		more = fmt.Sprintf(" (and %d more updates)", len(refused)-1)
	}
	return changes, fmt.Errorf("memory: presence of %q in %q: %d sessions would exceed the limit of %d%s: %w",
		u.Member, u.Key, u.Sessions, u.Limit, more, backplane.ErrOverLimit)
}

// setLocked sets in's sessions of u.Member in u.Key to u.Sessions, unless
// u.Limit refuses it (ok is false then), and returns the change to the
// cluster-wide membership it made, if any. s.mu must be held for writing.
func (s *presenceStore) setLocked(in *presInstance, u backplane.PresenceUpdate) (c backplane.PresenceChange, changed, ok bool) {
	slot := presSlot{u.Key, u.Member}
	old := in.entries[slot]
	if u.Sessions == old {
		return c, false, true
	}
	k := s.keys[u.Key]
	var m *presMember
	if k != nil {
		m = k.members[u.Member]
	}
	total := 0
	if m != nil {
		total = m.sessions
	}
	after := total - old + u.Sessions
	if u.Limit > 0 && u.Sessions > old && after > u.Limit {
		return c, false, false
	}

	if u.Sessions == 0 {
		delete(in.entries, slot)
	} else {
		in.entries[slot] = u.Sessions
	}
	if m == nil { // total was 0, and so was old: the member joins
		if k == nil {
			if s.keys == nil {
				s.keys = make(map[string]*presKey)
			}
			k = &presKey{members: make(map[string]*presMember)}
			s.keys[u.Key] = k
		}
		m = &presMember{holders: make(map[string]int, 1)}
		k.members[u.Member] = m
		k.order.insert(u.Member)
	}
	m.sessions = after
	if u.Sessions == 0 {
		delete(m.holders, in.name)
	} else {
		m.holders[in.name] = u.Sessions
	}
	if after == 0 {
		delete(k.members, u.Member)
		k.order.remove(u.Member)
		if len(k.members) == 0 {
			delete(s.keys, u.Key)
		}
	}
	c = backplane.PresenceChange{Key: u.Key, Member: u.Member}
	switch {
	case total == 0:
		c.Present = true
		return c, true, true
	case after == 0:
		return c, true, true
	}
	return c, false, true
}

// RefreshPresence renews the lease of instance, registering it on its first
// call, and removes the entries of the instances whose lease ran out (see
// backplane.Presence and Bus.SetPresenceTTL). Next is a third of the time
// to live: the removal is always finished. It reports Lost for an instance
// that was taken for dead, whose lease ran out, or that Bus.DropPresence
// dropped; such a refresh removes nothing, leaving the removal, and its
// changes, to the next refresh of a live instance, such as the caller's new
// one.
//
// Like every presence method of a node, it returns an error wrapping
// backplane.ErrUnavailable while the node is partitioned, so that its
// instances stop being refreshed and die once the time to live has passed,
// one wrapping backplane.ErrClosed after Close, and ctx.Err() if ctx is
// done. Closing a node does not remove its entries: they are removed once
// its instances' time to live has passed.
func (n *Node) RefreshPresence(ctx context.Context, instance string) (backplane.PresenceRefresh, error) {
	if err := n.presenceCall(ctx); err != nil {
		return backplane.PresenceRefresh{}, err
	}
	if instance == "" {
		return backplane.PresenceRefresh{}, errEmptyInstance
	}
	return n.bus.refreshPresence(instance), nil
}

// UpdatePresence sets instance's sessions for each update's key and member
// and returns what changed in the cluster-wide membership, in the order of
// the updates (see backplane.Presence). It checks every update first: an
// empty Key (an error wrapping backplane.ErrInvalidChannel), an empty
// Member or negative Sessions make it apply none. When Limits refuse some
// updates it still applies the others, and returns their changes with an
// error wrapping backplane.ErrOverLimit.
func (n *Node) UpdatePresence(ctx context.Context, instance string, updates []backplane.PresenceUpdate) ([]backplane.PresenceChange, error) {
	if err := n.presenceCall(ctx); err != nil {
		return nil, err
	}
	if instance == "" {
		return nil, errEmptyInstance
	}
	for _, u := range updates {
		switch {
		case u.Key == "":
			return nil, errEmptyChannel()
		case u.Member == "":
			return nil, fmt.Errorf("memory: empty presence member in %q", u.Key)
		case u.Sessions < 0:
			return nil, fmt.Errorf("memory: negative sessions %d of %q in %q", u.Sessions, u.Member, u.Key)
		}
	}
	return n.bus.updatePresence(instance, updates)
}

// PresenceCount returns how many members key has, in O(1).
func (n *Node) PresenceCount(ctx context.Context, key string) (int, error) {
	if err := n.presenceKeyCall(ctx, key); err != nil {
		return 0, err
	}
	s := &n.bus.presence
	s.mu.RLock()
	defer s.mu.RUnlock()
	if k := s.keys[key]; k != nil {
		return len(k.members), nil
	}
	return 0, nil
}

// PresenceMember returns member's sessions in key across the cluster and
// the instances that hold them, sorted.
func (n *Node) PresenceMember(ctx context.Context, key, member string) (int, []string, error) {
	if err := n.presenceKeyCall(ctx, key); err != nil {
		return 0, nil, err
	}
	s := &n.bus.presence
	s.mu.RLock()
	defer s.mu.RUnlock()
	k := s.keys[key]
	if k == nil {
		return 0, nil, nil
	}
	m := k.members[member]
	if m == nil {
		return 0, nil, nil
	}
	return m.sessions, slices.Sorted(maps.Keys(m.holders)), nil
}

// PresenceMembers returns up to limit members of key after cursor, in byte
// order, and the cursor of the next page: the last member returned, or
// empty when no member follows it. A page costs O(log n + limit): the
// members of a key are kept sorted.
func (n *Node) PresenceMembers(ctx context.Context, key, cursor string, limit int) ([]backplane.PresenceEntry, string, error) {
	if err := n.presenceKeyCall(ctx, key); err != nil {
		return nil, "", err
	}
	if limit < 1 {
		limit = defaultPresencePage
	}
	s := &n.bus.presence
	s.mu.RLock()
	defer s.mu.RUnlock()
	k := s.keys[key]
	if k == nil {
		return nil, "", nil
	}
	page := make([]backplane.PresenceEntry, 0, min(limit, len(k.members)))
	more := k.order.after(cursor, limit, func(member string) {
		page = append(page, backplane.PresenceEntry{Member: member, Sessions: k.members[member].sessions})
	})
	if !more {
		return page, "", nil
	}
	return page, page[len(page)-1].Member, nil
}

var errEmptyInstance = errors.New("memory: empty presence instance")

// presenceCall returns ctx.Err() if ctx is done, an error wrapping
// backplane.ErrClosed after Close and one wrapping backplane.ErrUnavailable
// while n is partitioned.
func (n *Node) presenceCall(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return n.publishable()
}

// presenceKeyCall is presenceCall for a read of key.
func (n *Node) presenceKeyCall(ctx context.Context, key string) error {
	if err := n.presenceCall(ctx); err != nil {
		return err
	}
	if key == "" {
		return errEmptyChannel()
	}
	return nil
}

// chunkMax is the largest number of strings in a chunk of a memberSet.
const chunkMax = 512

// memberSet is an ordered set of strings, kept as a list of sorted chunks of
// at most chunkMax strings, none empty, each after the one before: finding
// a string costs O(log n), adding or removing one O(log n + chunkMax) plus,
// when a chunk splits or goes, a move of the list (n / chunkMax slice
// headers), and reading k strings from a position O(k). Removal merges a
// chunk with a neighbour when both together fill at most half of one, so
// that chunks stay a fair fraction full. The zero memberSet is empty.
type memberSet struct {
	chunks [][]string
}

// search returns the position of the first string not below s: chunk c,
// index i in it, and whether it is s. c is len(m.chunks) when every string
// is below s.
func (m *memberSet) search(s string) (c, i int, found bool) {
	c = sort.Search(len(m.chunks), func(j int) bool {
		ch := m.chunks[j]
		return ch[len(ch)-1] >= s
	})
	if c == len(m.chunks) {
		return c, 0, false
	}
	ch := m.chunks[c]
	i = sort.SearchStrings(ch, s)
	return c, i, ch[i] == s // i < len(ch): the last string is not below s
}

// insert adds s to the set.
func (m *memberSet) insert(s string) {
	c, i, found := m.search(s)
	if found {
		return
	}
	if c == len(m.chunks) { // after every string: at the end of the last chunk
		if c == 0 {
			m.chunks = append(m.chunks, make([]string, 0, 8))
		} else {
			c--
		}
		i = len(m.chunks[c])
	}
	ch := slices.Insert(m.chunks[c], i, s)
	if len(ch) <= chunkMax {
		m.chunks[c] = ch
		return
	}
	half := len(ch) / 2
	right := append(make([]string, 0, chunkMax), ch[half:]...)
	clear(ch[half:])
	m.chunks[c] = ch[:half]
	m.chunks = slices.Insert(m.chunks, c+1, right)
}

// remove deletes s from the set.
func (m *memberSet) remove(s string) {
	c, i, found := m.search(s)
	if !found {
		return
	}
	ch := slices.Delete(m.chunks[c], i, i+1)
	m.chunks[c] = ch
	switch {
	case len(ch) == 0:
		m.chunks = slices.Delete(m.chunks, c, c+1)
	case c+1 < len(m.chunks) && len(ch)+len(m.chunks[c+1]) <= chunkMax/2:
		m.mergeNext(c)
	case c > 0 && len(ch)+len(m.chunks[c-1]) <= chunkMax/2:
		m.mergeNext(c - 1)
	}
	if len(m.chunks) == 0 {
		m.chunks = nil
	}
}

// mergeNext appends chunk c+1 to chunk c.
func (m *memberSet) mergeNext(c int) {
	m.chunks[c] = append(m.chunks[c], m.chunks[c+1]...)
	m.chunks = slices.Delete(m.chunks, c+1, c+2)
}

// after calls fn for up to limit strings after cursor, in order, and
// reports whether more strings follow the last one.
func (m *memberSet) after(cursor string, limit int, fn func(string)) (more bool) {
	c, i, found := m.search(cursor)
	if found {
		i++
	}
	for ; c < len(m.chunks); c, i = c+1, 0 {
		for _, s := range m.chunks[c][i:] {
			if limit == 0 {
				return true
			}
			fn(s)
			limit--
		}
	}
	return false
}
