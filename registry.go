package wshub

import (
	"sort"
	"sync"
)

// transitions is told when a backplane channel gains its first holder on
// this node and when it loses its last one. The registry calls it under its
// own lock, so it sees every transition in order; it must not block. first
// and ready return the flush that confirms the channel's subscription,
// or nil when it is confirmed.
type transitions interface {
	first(channel string) *flush
	last(channel string)
	ready(channel string) *flush // for a channel that already has holders
}

// registry indexes this node's sessions by ID, by user and by topic, under
// a lock of its own. Adding and removing sessions and topics reports the
// first and last holder of each user and topic channel to on, which keeps
// the backplane's interest equal to what the node holds.
type registry struct {
	on transitions

	mu       sync.RWMutex
	closed   bool
	sessions map[string]*Session
	users    map[string]map[*Session]struct{}
	topics   map[string]map[*Session]struct{}
	// Every Session's topics set is guarded by mu too.
}

func newRegistry(on transitions) *registry {
	return &registry{
		on:       on,
		sessions: make(map[string]*Session),
		users:    make(map[string]map[*Session]struct{}),
		topics:   make(map[string]map[*Session]struct{}),
	}
}

// add registers s. It returns the flush that confirms the subscription of
// s's user channel (nil when there is nothing to wait for), or ErrClosed
// once the registry is closed.
func (r *registry) add(s *Session) (*flush, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, ErrClosed
	}
	r.sessions[s.id] = s
	if s.userID == "" {
		return nil, nil
	}
	set := r.users[s.userID]
	if set == nil {
		set = make(map[*Session]struct{})
		r.users[s.userID] = set
	}
	set[s] = struct{}{}
	if len(set) == 1 {
		return r.on.first(userPrefix + s.userID), nil
	}
	return r.on.ready(userPrefix + s.userID), nil
}

// remove unregisters s and takes it out of every topic. It is safe to call
// more than once.
func (r *registry) remove(s *Session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sessions[s.id] != s {
		return
	}
	delete(r.sessions, s.id)
	if s.userID != "" {
		set := r.users[s.userID]
		delete(set, s)
		if len(set) == 0 {
			delete(r.users, s.userID)
			r.on.last(userPrefix + s.userID)
		}
	}
	for topic := range s.topics {
		r.leaveLocked(s, topic)
	}
}

// join adds s to topic. It reports whether s is registered, whether it was
// already in topic, and the flush that confirms the topic's subscription.
func (r *registry) join(s *Session, topic string) (f *flush, already, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sessions[s.id] != s {
		return nil, false, false
	}
	f, already = r.joinLocked(s, topic)
	return f, already, true
}

func (r *registry) joinLocked(s *Session, topic string) (f *flush, already bool) {
	if _, ok := s.topics[topic]; ok {
		return r.on.ready(topicPrefix + topic), true
	}
	if s.topics == nil {
		s.topics = make(map[string]struct{})
	}
	s.topics[topic] = struct{}{}
	set := r.topics[topic]
	if set == nil {
		set = make(map[*Session]struct{})
		r.topics[topic] = set
	}
	set[s] = struct{}{}
	if len(set) == 1 {
		return r.on.first(topicPrefix + topic), false
	}
	return r.on.ready(topicPrefix + topic), false
}

// leave removes s from topic; leaving a topic s is not in does nothing.
func (r *registry) leave(s *Session, topic string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.leaveLocked(s, topic)
}

func (r *registry) leaveLocked(s *Session, topic string) {
	if _, ok := s.topics[topic]; !ok {
		return
	}
	delete(s.topics, topic)
	set := r.topics[topic]
	delete(set, s)
	if len(set) == 0 {
		delete(r.topics, topic)
		r.on.last(topicPrefix + topic)
	}
}

// joinUser adds every session of user to topic, or removes them from it
// (join false), and returns the flush that confirms the topic's
// subscription, if a session joined and there is one to wait for.
func (r *registry) joinUser(user, topic string, join bool) *flush {
	r.mu.Lock()
	defer r.mu.Unlock()
	var f *flush
	for s := range r.users[user] {
		if !join {
			r.leaveLocked(s, topic)
		} else if g, _ := r.joinLocked(s, topic); g != nil {
			f = g
		}
	}
	return f
}

// session returns the session with ID id, or nil.
func (r *registry) session(id string) *Session {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.sessions[id]
}

// userSessions returns the sessions of user.
func (r *registry) userSessions(user string) []*Session {
	r.mu.RLock()
	defer r.mu.RUnlock()
	list := make([]*Session, 0, len(r.users[user]))
	for s := range r.users[user] {
		list = append(list, s)
	}
	return list
}

// deliver queues d to every session of index[key] (index is r.users or
// r.topics) but the one with ID except, under the read lock, and returns
// how many took it. It is the fan-out, written out rather than with a
// callback so that it allocates nothing per message.
func (r *registry) deliver(index map[string]map[*Session]struct{}, key string, d *delivery, except string) uint64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var n uint64
	for s := range index[key] {
		if s.id != except && s.deliver(d) {
			n++
		}
	}
	return n
}

// count returns how many sessions index[key] holds.
func (r *registry) count(index map[string]map[*Session]struct{}, key string) int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(index[key])
}

// topicsOf returns the topics s is in, sorted.
func (r *registry) topicsOf(s *Session) []string {
	r.mu.RLock()
	t := make([]string, 0, len(s.topics))
	for k := range s.topics {
		t = append(t, k)
	}
	r.mu.RUnlock()
	sort.Strings(t)
	return t
}

// inTopic reports whether s is in topic.
func (r *registry) inTopic(s *Session, topic string) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	_, ok := s.topics[topic]
	return ok
}

// len returns the number of sessions.
func (r *registry) len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.sessions)
}

// isClosed reports whether close was called.
func (r *registry) isClosed() bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.closed
}

// close refuses further sessions and returns those registered.
func (r *registry) close() []*Session {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	list := make([]*Session, 0, len(r.sessions))
	for _, s := range r.sessions {
		list = append(list, s)
	}
	return list
}
