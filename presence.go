package wshub

import (
	"context"
	"fmt"
	"runtime/debug"
	"strings"

	"github.com/wshub/wshub/backplane"
)

// PresenceKind says what a PresenceEvent reports.
type PresenceKind int

// The kinds of PresenceEvent.
const (
	// PresenceOnline: the user had no session anywhere in the cluster and
	// now has one.
	PresenceOnline PresenceKind = iota + 1
	// PresenceOffline: the user's last session in the cluster ended, or
	// was taken out with its node (see the package doc, "Presence").
	PresenceOffline
	// PresenceJoined: the user had no session in Topic anywhere and now
	// has one.
	PresenceJoined
	// PresenceLeft: the user's last session in Topic left it, ended, or
	// was taken out with its node.
	PresenceLeft
)

// String returns "online", "offline", "joined" or "left".
func (k PresenceKind) String() string {
	switch k {
	case PresenceOnline:
		return "online"
	case PresenceOffline:
		return "offline"
	case PresenceJoined:
		return "joined"
	case PresenceLeft:
		return "left"
	default:
		return fmt.Sprintf("PresenceKind(%d)", int(k))
	}
}

// PresenceEvent is a change in who is connected, cluster-wide.
type PresenceEvent struct {
	Kind   PresenceKind
	UserID string
	Topic  string // for PresenceJoined and PresenceLeft
}

// Member is one user in a topic.
type Member struct {
	UserID   string
	Sessions int // the user's sessions in the topic, across the cluster
}

// maxMembersPage bounds one page of TopicMembers.
const maxMembersPage = 1000

// presence returns the backplane's presence record, or ErrNoPresence.
func (h *Hub) presence() (backplane.Presence, error) {
	if h.isClosed() {
		return nil, ErrClosed
	}
	p, ok := h.bp.(backplane.Presence)
	if !ok {
		return nil, fmt.Errorf("%w: %T", ErrNoPresence, h.bp)
	}
	return p, nil
}

// Online returns how many sessions userID has across the cluster: 0 when
// it is offline. It is one read of the backplane's presence record (one
// round trip to Redis, a short script), cheap enough to call before every
// Send. It returns an
// error wrapping ErrNoPresence when the backplane keeps no presence
// record. See the package doc ("Presence") for how fresh the answer is.
func (h *Hub) Online(ctx context.Context, userID string) (int, error) {
	if err := checkName(userID, ErrInvalidUserID); err != nil {
		return 0, err
	}
	p, err := h.presence()
	if err != nil {
		return 0, err
	}
	n, _, err := p.PresenceMember(ctx, userPrefix+userID, userID)
	if err != nil {
		return 0, fmt.Errorf("wshub: online %q: %w", userID, err)
	}
	return n, nil
}

// TopicCount returns how many users have a session in topic across the
// cluster, in O(1) whatever their number. Anonymous sessions are not
// counted.
func (h *Hub) TopicCount(ctx context.Context, topic string) (int, error) {
	if err := checkName(topic, ErrInvalidTopic); err != nil {
		return 0, err
	}
	p, err := h.presence()
	if err != nil {
		return 0, err
	}
	n, err := p.PresenceCount(ctx, topicPrefix+topic)
	if err != nil {
		return 0, fmt.Errorf("wshub: topic count %q: %w", topic, err)
	}
	return n, nil
}

// TopicMembers returns one page of the users in topic, in byte order of
// user ID, with their sessions in it: up to limit users (1 to 1000; 0
// means 100), after cursor, and the cursor of the next page, empty after
// the last one. Start with an empty cursor. A page costs O(log n + limit)
// whatever the topic's size. A user in the topic for the whole walk is
// listed exactly once.
func (h *Hub) TopicMembers(ctx context.Context, topic, cursor string, limit int) (members []Member, next string, err error) {
	if err := checkName(topic, ErrInvalidTopic); err != nil {
		return nil, "", err
	}
	if limit < 0 || limit > maxMembersPage {
		return nil, "", fmt.Errorf("%w: limit %d, want 0 to %d", ErrInvalidOptions, limit, maxMembersPage)
	}
	if limit == 0 {
		limit = 100
	}
	p, err := h.presence()
	if err != nil {
		return nil, "", err
	}
	entries, next, err := p.PresenceMembers(ctx, topicPrefix+topic, cursor, limit)
	if err != nil {
		return nil, "", fmt.Errorf("wshub: topic members %q: %w", topic, err)
	}
	members = make([]Member, 0, min(len(entries), limit))
	for _, e := range entries {
		if len(members) == limit {
			break // a backplane's reply is not trusted to keep the limit
		}
		members = append(members, Member{UserID: e.Member, Sessions: e.Sessions})
	}
	return members, next, nil
}

// holders returns the nodes that hold sessions of userID, per the
// presence record.
func (h *Hub) holders(ctx context.Context, userID string) ([]string, error) {
	p, err := h.presence()
	if err != nil {
		return nil, err
	}
	_, insts, err := p.PresenceMember(ctx, userPrefix+userID, userID)
	if err != nil {
		return nil, err
	}
	nodes := make([]string, 0, len(insts))
	seen := make(map[string]bool, len(insts))
	for _, inst := range insts {
		if n := nodeOfInstance(inst); !seen[n] && checkName(n, ErrInvalidOptions) == nil {
			seen[n] = true
			nodes = append(nodes, n)
		}
	}
	return nodes, nil
}

// onPresence turns what changed in the presence record into events for
// Options.OnPresence and messages of Options.PresenceMessage. It runs on
// the tracker's events goroutine.
func (h *Hub) onPresence(changes []backplane.PresenceChange) {
	if h.opts.OnPresence == nil && h.opts.PresenceMessage == nil {
		return
	}
	for _, c := range changes {
		ev, ok := presenceEvent(c)
		if !ok {
			continue
		}
		h.presenceHooks(ev)
	}
}

// presenceEvent maps a change of the record to an event; changes of keys
// the hub does not write are ignored.
func presenceEvent(c backplane.PresenceChange) (PresenceEvent, bool) {
	switch {
	case strings.HasPrefix(c.Key, userPrefix):
		if c.Member != c.Key[len(userPrefix):] {
			return PresenceEvent{}, false
		}
		ev := PresenceEvent{Kind: PresenceOffline, UserID: c.Member}
		if c.Present {
			ev.Kind = PresenceOnline
		}
		return ev, true
	case strings.HasPrefix(c.Key, topicPrefix):
		ev := PresenceEvent{Kind: PresenceLeft, UserID: c.Member, Topic: c.Key[len(topicPrefix):]}
		if c.Present {
			ev.Kind = PresenceJoined
		}
		return ev, ev.UserID != "" && ev.Topic != ""
	}
	return PresenceEvent{}, false
}

// presenceHooks calls the presence hooks for ev, recovering their panics.
func (h *Hub) presenceHooks(ev PresenceEvent) {
	defer func() {
		if v := recover(); v != nil {
			h.log.Error("wshub: panic in a presence hook", "panic", v, "stack", string(debug.Stack()))
		}
	}()
	if h.opts.OnPresence != nil {
		h.opts.OnPresence(ev)
	}
	if h.opts.PresenceMessage == nil || ev.Topic == "" {
		return
	}
	msg, ok := h.opts.PresenceMessage(ev)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(h.ctx, presenceCall)
	defer cancel()
	if err := h.Broadcast(ctx, ev.Topic, msg); err != nil {
		h.log.Debug("wshub: presence message not sent", "topic", ev.Topic, "err", err)
	}
}
