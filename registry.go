package wshub

import (
	"fmt"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
)

// The errors of an add refused by a session limit; ServeHTTP tells them
// apart to answer 429 or 503. Both wrap ErrLimit.
var (
	errUserSessions = fmt.Errorf("%w: Limits.SessionsPerUser", ErrLimit)
	errNodeSessions = fmt.Errorf("%w: Limits.Sessions", ErrLimit)
	// errClusterSessions is a refusal by Limits.ClusterSessionsPerUser;
	// ServeHTTP answers it like errUserSessions.
	errClusterSessions = fmt.Errorf("%w: Limits.ClusterSessionsPerUser", ErrLimit)
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
//
// It enforces the session and topic limits of Options.Limits under the same
// lock as the insert they bound, so that concurrent upgrades or joins cannot
// together exceed them.
type registry struct {
	on   transitions
	pres *tracker // nil without presence
	// hold has pres hold a user's key on each add, for
	// Limits.ClusterSessionsPerUser (see tracker.count).
	hold bool

	// The limits; a bound that is not positive is no bound.
	perUser, perNode, perSession int
	topicsRefused                *atomic.Uint64 // the hub's counter

	mu       sync.RWMutex
	closed   bool
	sessions map[string]*Session
	users    map[string]map[*Session]struct{}
	topics   map[string]map[*Session]struct{}
	// Every Session's topics set is guarded by mu too.
}

// newRegistry returns a registry that reports to on and enforces the
// session and topic limits of l (with its defaults filled in), counting the
// joins it refuses in topicsRefused.
func newRegistry(on transitions, l Limits, topicsRefused *atomic.Uint64) *registry {
	return &registry{
		on:            on,
		perUser:       l.SessionsPerUser,
		perNode:       l.Sessions,
		perSession:    l.TopicsPerSession,
		topicsRefused: topicsRefused,
		sessions:      make(map[string]*Session),
		users:         make(map[string]map[*Session]struct{}),
		topics:        make(map[string]map[*Session]struct{}),
	}
}

// add registers s. It returns the flush that confirms the subscription of
// s's user channel (nil when there is nothing to wait for), or ErrClosed once
// the registry is closed, or, leaving everything as it was, errNodeSessions
// when the node holds Limits.Sessions sessions and errUserSessions when s's
// user holds Limits.SessionsPerUser (anonymous sessions have no user
// limit).
func (r *registry) add(s *Session) (*flush, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, ErrClosed
	}
	if r.perNode > 0 && len(r.sessions) >= r.perNode {
		return nil, errNodeSessions
	}
	set := r.users[s.userID]
	if s.userID != "" && r.perUser > 0 && len(set) >= r.perUser {
		return nil, errUserSessions
	}
	r.sessions[s.id] = s
	if s.userID == "" {
		return nil, nil
	}
	if set == nil {
		set = make(map[*Session]struct{})
		r.users[s.userID] = set
	}
	set[s] = struct{}{}
	if r.pres != nil {
		r.pres.count(userPrefix+s.userID, s.userID, 1, r.hold)
	}
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
		r.presence(userPrefix+s.userID, s.userID, -1)
		if len(set) == 0 {
			delete(r.users, s.userID)
			r.on.last(userPrefix + s.userID)
		}
	}
	for topic := range s.topics {
		r.leaveLocked(s, topic)
	}
}

// join adds s to topic. It returns the flush that confirms the topic's
// subscription and whether s was already in topic, or ErrSessionClosed when
// s is not registered, or an error wrapping ErrLimit when s is in
// Limits.TopicsPerSession other topics.
func (r *registry) join(s *Session, topic string) (f *flush, already bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sessions[s.id] != s {
		return nil, false, ErrSessionClosed
	}
	f, already, full := r.joinLocked(s, topic)
	if full {
		return nil, false, fmt.Errorf("wshub: join %q: %w: Limits.TopicsPerSession (%d)", topic, ErrLimit, r.perSession)
	}
	return f, already, nil
}

// joinLocked adds s to topic, unless s is in Limits.TopicsPerSession topics
// already, which it counts and reports as full.
func (r *registry) joinLocked(s *Session, topic string) (f *flush, already, full bool) {
	if _, ok := s.topics[topic]; ok {
		return r.on.ready(topicPrefix + topic), true, false
	}
	if r.perSession > 0 && len(s.topics) >= r.perSession {
		r.topicsRefused.Add(1)
		return nil, false, true
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
	if s.userID != "" {
		r.presence(topicPrefix+topic, s.userID, 1)
	}
	if len(set) == 1 {
		return r.on.first(topicPrefix + topic), false, false
	}
	return r.on.ready(topicPrefix + topic), false, false
}

// presence tells the tracker, if any, that member's sessions here in key
// changed by delta.
func (r *registry) presence(key, member string, delta int) {
	if r.pres != nil {
		r.pres.count(key, member, delta, false)
	}
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
	if s.userID != "" {
		r.presence(topicPrefix+topic, s.userID, -1)
	}
	if len(set) == 0 {
		delete(r.topics, topic)
		r.on.last(topicPrefix + topic)
	}
}

// joinUser adds every session of user to topic, or removes them from it
// (join false), and returns the flush that confirms the topic's
// subscription, if a session joined and there is one to wait for. Sessions
// at Limits.TopicsPerSession are skipped, and counted.
func (r *registry) joinUser(user, topic string, join bool) *flush {
	r.mu.Lock()
	defer r.mu.Unlock()
	var f *flush
	for s := range r.users[user] {
		if !join {
			r.leaveLocked(s, topic)
		} else if g, _, _ := r.joinLocked(s, topic); g != nil {
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
	set := index[key]
	d.shared = len(set) > 1
	if d.through && len(set) >= 2*fanoutChunk && runtime.GOMAXPROCS(0) > 1 {
		return deliverParallel(set, d, except)
	}
	for s := range set {
		if s.id != except && s.deliver(d) {
			n++
		}
	}
	return n
}

// fanoutChunk is the fewest sessions a goroutine of a parallel fan-out
// takes.
const fanoutChunk = 256

var fanoutLists = sync.Pool{New: func() any { return new([]*Session) }}

// deliverParallel is deliver's fan-out spread over the cores, for a large
// set that the fan-out writes to itself (d.through), where each recipient
// costs a system call: the set is cut into one part per core, at least
// fanoutChunk sessions each, delivered at once by goroutines that have
// ended when it returns. Each session still gets the messages in order: a
// fan-out ends before the next begins.
func deliverParallel(set map[*Session]struct{}, dp *delivery, except string) uint64 {
	dp.prepare()
	d := new(delivery) // shared with the goroutines: a copy, so that dp stays on its caller's stack
	*d = *dp
	lp := fanoutLists.Get().(*[]*Session)
	list := (*lp)[:0]
	for s := range set {
		if s.id != except {
			list = append(list, s)
		}
	}
	parts := min(runtime.GOMAXPROCS(0), len(list)/fanoutChunk)
	var n atomic.Uint64
	var wg sync.WaitGroup
	per := (len(list) + parts - 1) / parts
	for i := 0; i < len(list); i += per {
		part := list[i:min(i+per, len(list))]
		deliverAll := func() {
			var k uint64
			for _, s := range part {
				if s.deliver(d) {
					k++
				}
			}
			n.Add(k)
		}
		if i+per >= len(list) {
			deliverAll() // the last part on this goroutine
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			deliverAll()
		}()
	}
	wg.Wait()
	clear(list)
	*lp = list[:0]
	fanoutLists.Put(lp)
	return n.Load()
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
