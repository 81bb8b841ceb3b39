package backplane

import (
	"context"
	"errors"
	"time"
)

// ErrOverLimit is returned by Presence.UpdatePresence when an update with a
// Limit was refused because it would take its member over that limit.
var ErrOverLimit = errors.New("backplane: presence limit reached")

// Presence is implemented by backplanes that keep a cluster-wide record of
// who is connected: for each key (the hub uses its channel names, "u:<user>"
// with the user as its one member and "t:<topic>" with users as members),
// the members it has and how many sessions each has across the cluster.
// The hub finds it by type assertion.
//
// Entries are written per instance: one life of one node's presence, named
// by the caller (the hub uses its node ID and a random suffix). An instance
// stays alive while its node calls RefreshPresence for it within the
// backend's time to live; an instance that stops (its node was killed, or
// cut off from the store for longer than that) is taken for dead, and the
// next RefreshPresence of any live instance removes its entries. A dead
// instance stays dead: once RefreshPresence reports it Lost, nothing it
// writes is kept, and the caller must pick a new instance, refresh it and
// write all of its entries again (the same applies when the store lost
// everything, as a Redis restarted without persistence does).
//
// Calls for one instance are not concurrent: the caller serializes them.
//
// Counts and pages read what the store holds now: a member of a dead
// instance is counted until it is removed, at most the time to live plus
// one refresh interval after its instance's last refresh. All methods are
// safe for concurrent use; every one returns an error wrapping ErrClosed
// after Close, one wrapping ErrUnavailable when the store cannot be
// reached, and one wrapping ErrInvalidChannel for an empty key (or an
// empty member in an update).
type Presence interface {
	// RefreshPresence proves that instance is alive and removes the
	// entries of instances that are not, returning what that removal
	// changed. The first call for an instance registers it. It reports
	// Lost when the instance was taken for dead or its entries were lost:
	// the caller must not use it again. Changes may come with Lost too;
	// the caller applies them either way.
	RefreshPresence(ctx context.Context, instance string) (PresenceRefresh, error)

	// UpdatePresence sets instance's count of sessions for each update's
	// key and member (a count of 0 removes the entry) and returns what
	// changed in the cluster-wide membership. It is idempotent: an update
	// that sets what is already set changes nothing. Updates are applied
	// in order, each atomically; when one is refused by its Limit the
	// others are still applied, their changes returned with the error,
	// which wraps ErrOverLimit (a caller that must know which update was
	// refused sends it alone). It returns an error wrapping
	// ErrUnavailable, and keeps nothing, when instance was not refreshed
	// within the time to live or was taken for dead.
	UpdatePresence(ctx context.Context, instance string, updates []PresenceUpdate) ([]PresenceChange, error)

	// PresenceCount returns how many members key has: O(1), whatever
	// their number.
	PresenceCount(ctx context.Context, key string) (int, error)

	// PresenceMember returns member's sessions in key across the cluster
	// (0 when it has none) and the instances that hold them.
	PresenceMember(ctx context.Context, key, member string) (sessions int, instances []string, err error)

	// PresenceMembers returns one page of key's members: up to limit of
	// them (a limit below 1 means 100), in byte order of Member, after
	// cursor, and the cursor of the next page, which is empty after the
	// last one. Start with an empty cursor. A member present for the whole
	// walk is returned exactly once; one that joins or leaves meanwhile
	// may or may not be. A page costs O(log n + limit), never O(n).
	PresenceMembers(ctx context.Context, key, cursor string, limit int) (members []PresenceEntry, next string, err error)
}

// PresenceUpdate sets one instance's sessions of a member in a key.
type PresenceUpdate struct {
	Key, Member string
	// Sessions is the instance's number of sessions of Member in Key; 0
	// removes its entry.
	Sessions int
	// Limit, when positive, refuses the update if it would raise Member's
	// sessions in Key across the cluster above Limit. Lowering a count is
	// never refused. Two instances racing for the last place cannot both
	// get it: the check and the write are one atomic step.
	Limit int
}

// PresenceChange is a change in a key's cluster-wide membership.
type PresenceChange struct {
	Key, Member string
	// Present is true when Member had no sessions in Key anywhere and now
	// has, and false when it had and now has none.
	Present bool
}

// PresenceEntry is one member of a key.
type PresenceEntry struct {
	Member   string
	Sessions int // across the cluster
}

// PresenceRefresh is what RefreshPresence found.
type PresenceRefresh struct {
	// Lost reports that the instance was taken for dead or its entries
	// were lost: the caller must start a new one.
	Lost bool
	// Changes are what removing dead instances changed.
	Changes []PresenceChange
	// Next is when to refresh again at the latest: a fraction of the time
	// to live, or less when removal of dead instances is not finished.
	Next time.Duration
}
