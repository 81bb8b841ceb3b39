package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/wshub/wshub"
	"github.com/wshub/wshub/backplane"
	wsredis "github.com/wshub/wshub/backplane/redis"
)

// runPresence measures what the presence record costs in Redis, on a
// redis-server it starts itself on a free port of 127.0.0.1 and stops
// (-backplane is ignored). It has two parts.
//
// Below the sockets: -users users online across -nodes (at least 2) Redis
// backplanes, one presence instance each, and one topic of -members of
// them, written with UpdatePresence in calls of 512 updates, as the hub's
// tracker writes them ("u:<user>" with the user as its member, "t:<topic>"
// with users as members). It measures the Redis memory per user and per
// topic member; the cost of -conns connects and as many disconnects (a
// user coming online and joining the topic, and the reverse), batched as
// the tracker batches them and one call each; the cost and Go wall time of
// -reads reads of each kind (PresenceMember of a user, which Hub.Online
// is; PresenceCount of the topic, which Hub.TopicCount is; a page of 100
// of PresenceMembers, which Hub.TopicMembers is); a RefreshPresence, and
// from it the heartbeat of a node per second at the default time to live;
// and counts and pages of a second topic grown to 1%, 10% and 100% of the
// users.
//
// Through the hub: -nodes hubs on the same Redis with their defaults, and
// -conns real WebSocket clients, each a user joining the topic in
// OnConnect. It measures what a connect and a disconnect cost in Redis as
// the hubs issue it (subscriptions and batched presence writes), the idle
// traffic per node per second over -idle with the clients connected, and
// Hub.Online, TopicCount and TopicMembers.
//
// Every cost is from Redis's own counters: INFO commandstats (the commands
// Redis ran, those run by scripts included), total_net_input_bytes and
// total_net_output_bytes, and for memory used_memory minus
// mem_clients_normal (client buffers). They are read on a connection of
// the tool's own whose commands and bytes are taken out. The commands the
// backplanes sent (a script is one) and their round trips are counted on
// their connections. Through the hub, the hubs' probes (the only PUBLISH
// commands) and presence refreshes (the only scripts that run
// ZRANGEBYSCORE) are taken out of what a connect, a disconnect or a read
// cost, at their cost measured while idle.
func runPresence(ctx context.Context, e *env) (res result, err error) {
	e.res.Msgs, e.res.Size = 0, 0
	nodes := max(e.cfg.nodes, 2)
	e.res.Nodes = nodes
	if e.cfg.backplane != "memory://" {
		e.logf("presence: -backplane %s is ignored: the scenario starts its own redis-server", redactURL(e.cfg.backplane))
	}
	srv, err := startRedisServer(ctx, e.log)
	if err != nil {
		return result{}, err
	}
	defer func() { err = errors.Join(err, srv.stop()) }()
	e.res.Backplane = srv.url()
	m, err := dialMeter(ctx, srv.addr)
	if err != nil {
		return result{}, err
	}
	defer m.close()
	fig := &presenceFigures{
		Nodes: nodes, Users: e.cfg.users, TopicMembers: e.cfg.members, Reads: e.cfg.reads,
		Batch: presenceCallUpdates, PageSize: presencePage,
		RefreshEveryS: round(presenceDefaultTTL.Seconds()/3, 3),
	}
	if fig.Redis, err = m.version(); err != nil {
		return result{}, err
	}
	if err := e.presenceScale(ctx, srv.addr, m, nodes, fig); err != nil {
		return result{}, err
	}
	if err := e.presenceHubs(ctx, srv.addr, m, nodes, fig); err != nil {
		return result{}, err
	}
	e.res.Presence = fig
	return e.res, nil
}

// Constants of the presence scenario.
const (
	presenceCallUpdates = 512                   // updates per UpdatePresence call, as the hub's tracker sends
	presencePage        = 100                   // members per page read
	presenceDefaultTTL  = 10 * time.Second      // wsredis Options.PresenceTTL default: a refresh every third of it
	presenceScaleTTL    = 10 * time.Minute      // of the instances below the sockets, refreshed between phases
	presencePoll        = 50 * time.Millisecond // between looks at whether the hubs' writes are done
	presenceQuiet       = 4                     // polls without a write: done
	redisReady          = 10 * time.Second      // for redis-server to answer PING
	redisStop           = 5 * time.Second       // for redis-server to exit after SIGTERM
	meterTimeout        = 10 * time.Second      // of one command of the meter
	meterDialTimeout    = 2 * time.Second       // of the meter's and the clients' dials
)

// presenceQuietWrites are the commands, run or sent, that stop once the
// hubs' writes are done.
var presenceQuietWrites = []string{"hset", "hdel", "subscribe", "unsubscribe"}

// presenceFigures is the presence scenario's part of the JSON line
// ("presence"); other scenarios leave it out.
type presenceFigures struct {
	Redis        string `json:"redis"`         // redis-server version
	Nodes        int    `json:"nodes"`         // presence instances below the sockets, and hubs
	Users        int    `json:"users"`         // online, below the sockets
	TopicMembers int    `json:"topic_members"` // of the topic, below the sockets
	Reads        int    `json:"reads"`         // of each kind, for each read figure
	Batch        int    `json:"batch"`         // updates per UpdatePresence call
	PageSize     int    `json:"page_size"`     // members per page read

	LoadUpdatesPerS   float64 `json:"load_updates_per_s"`            // writing the users and the topic
	MemPerUser        float64 `json:"memory_bytes_per_user"`         // a user online: its "u:" entry
	MemPerMember      float64 `json:"memory_bytes_per_topic_member"` // an entry of the topic
	RedisKeysPerUser  float64 `json:"redis_keys_per_user"`
	Connect           opCost  `json:"connect"`          // per connect: the user's entry and its topic entry, in calls of Batch updates
	Disconnect        opCost  `json:"disconnect"`       // per disconnect, the same way
	ConnectAlone      opCost  `json:"connect_alone"`    // one UpdatePresence call per connect
	DisconnectAlone   opCost  `json:"disconnect_alone"` // one call per disconnect
	Online            opCost  `json:"online"`           // PresenceMember of a user (Hub.Online)
	TopicCount        opCost  `json:"topic_count"`      // PresenceCount of the topic (Hub.TopicCount)
	TopicMembersPage  opCost  `json:"topic_members_page"`
	Refresh           opCost  `json:"refresh"`                  // one RefreshPresence of an instance with Users/Nodes entries
	RefreshEveryS     float64 `json:"refresh_every_s"`          // at the default time to live
	HeartbeatPerNodeS opCost  `json:"heartbeat_per_node_per_s"` // Refresh over RefreshEveryS

	Scaling []scalePoint `json:"count_scaling"` // a second topic at 1%, 10% and 100% of Users
	Hub     hubFigures   `json:"hub"`
}

// scalePoint is the second topic at one size.
type scalePoint struct {
	Members      int     `json:"members"`
	MemPerMember float64 `json:"memory_bytes_per_member"` // of the topic at this size
	Count        opCost  `json:"topic_count"`
	Page         opCost  `json:"topic_members_page"`
}

// hubFigures are the measurements through real hubs and sockets.
type hubFigures struct {
	Conns            int     `json:"conns"`
	IdleS            float64 `json:"idle_s"`
	IdlePerNodeS     opCost  `json:"idle_per_node_per_s"` // probes and presence refreshes, with the clients connected
	Connect          opCost  `json:"connect"`             // per WebSocket client connected, joining the topic
	Disconnect       opCost  `json:"disconnect"`          // per client gone
	Online           opCost  `json:"online"`              // Hub.Online
	TopicCount       opCost  `json:"topic_count"`         // Hub.TopicCount
	TopicMembersPage opCost  `json:"topic_members_page"`  // Hub.TopicMembers, PageSize
}

// opCost is what one operation cost Redis, on average.
type opCost struct {
	RoundTrips float64 `json:"round_trips"` // of the backplanes' connections: writes after a read
	Requests   float64 `json:"requests"`    // commands the backplanes sent, a script one
	Cmds       float64 `json:"cmds"`        // commands Redis ran, those of scripts included
	InBytes    float64 `json:"in_bytes"`    // that Redis read
	OutBytes   float64 `json:"out_bytes"`   // that Redis wrote
	// Go wall time of one call, for reads and refreshes.
	P50Us float64 `json:"p50_us,omitempty"`
	P99Us float64 `json:"p99_us,omitempty"`
	// Sent are Requests by command, Ran Cmds by command.
	Sent map[string]float64 `json:"sent,omitempty"`
	Ran  map[string]float64 `json:"ran,omitempty"`
}

// usage is what Redis did between two snapshots, or a rate of it.
type usage struct {
	sent, ran map[string]float64
	in, out   float64
	trips     float64
}

// counters is one snapshot, with the meter's own commands and bytes taken
// out.
type counters struct {
	at        time.Time
	ran       map[string]int64 // INFO commandstats calls
	in, out   int64            // total_net_input_bytes, total_net_output_bytes
	mem       int64            // used_memory - mem_clients_normal
	keys      int64            // keys of db 0
	sent      map[string]int64 // commands the measured clients sent
	cin, cout int64            // bytes the measured clients read and wrote
	trips     int64            // their round trips
}

func between(a, b counters) usage {
	u := usage{sent: map[string]float64{}, ran: map[string]float64{}, in: float64(b.in - a.in), out: float64(b.out - a.out),
		trips: float64(b.trips - a.trips)}
	for k, v := range b.ran {
		if d := v - a.ran[k]; d != 0 {
			u.ran[k] = float64(d)
		}
	}
	for k, v := range b.sent {
		if d := v - a.sent[k]; d != 0 {
			u.sent[k] = float64(d)
		}
	}
	return u
}

// scaled returns u times f.
func (u usage) scaled(f float64) usage {
	v := usage{sent: map[string]float64{}, ran: map[string]float64{}, in: u.in * f, out: u.out * f, trips: u.trips * f}
	for k, x := range u.sent {
		v.sent[k] = x * f
	}
	for k, x := range u.ran {
		v.ran[k] = x * f
	}
	return v
}

// plus returns u plus f times v.
func (u usage) plus(v usage, f float64) usage {
	w := u.scaled(1)
	w.in += v.in * f
	w.out += v.out * f
	w.trips += v.trips * f
	for k, x := range v.sent {
		w.sent[k] += x * f
	}
	for k, x := range v.ran {
		w.ran[k] += x * f
	}
	return w
}

// usageOf returns what c is the cost of.
func usageOf(c opCost) usage {
	return usage{sent: c.Sent, ran: c.Ran, in: c.InBytes, out: c.OutBytes, trips: c.RoundTrips}
}

// cost returns u as the cost of one of n operations.
func (u usage) cost(n int) opCost {
	u = u.scaled(1 / float64(n))
	c := opCost{RoundTrips: round(u.trips, 3), InBytes: round(u.in, 1), OutBytes: round(u.out, 1), Sent: roundMap(u.sent), Ran: roundMap(u.ran)}
	for _, x := range u.sent {
		c.Requests += x
	}
	for _, x := range u.ran {
		c.Cmds += x
	}
	c.Requests, c.Cmds = round(c.Requests, 3), round(c.Cmds, 3)
	return c
}

// roundMap rounds to 3 digits, leaving out what rounds to 0.
func roundMap(m map[string]float64) map[string]float64 {
	out := make(map[string]float64, len(m))
	for k, v := range m {
		if r := round(v, 3); r != 0 {
			out[k] = r
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// withTimes sets c's quantiles of durs.
func withTimes(c opCost, durs []time.Duration) opCost {
	if len(durs) == 0 {
		return c
	}
	s := slices.Clone(durs)
	slices.Sort(s)
	q := func(p float64) float64 {
		i := int(math.Ceil(p*float64(len(s)))) - 1
		return round(float64(s[max(i, 0)].Nanoseconds())/1e3, 1)
	}
	c.P50Us, c.P99Us = q(0.50), q(0.99)
	return c
}

// ---- below the sockets

// scaleNode is one presence instance written below the sockets.
type scaleNode struct {
	bp     *wsredis.PubSub
	client *goredis.Client
	inst   string
}

// write sends ups for n's instance in calls of presenceCallUpdates.
func (n *scaleNode) write(ctx context.Context, ups []backplane.PresenceUpdate) error {
	for start := 0; start < len(ups); start += presenceCallUpdates {
		chunk := ups[start:min(len(ups), start+presenceCallUpdates)]
		if _, err := n.bp.UpdatePresence(ctx, n.inst, chunk); err != nil {
			return fmt.Errorf("presence: update %s: %w", n.inst, err)
		}
	}
	return nil
}

// scale is the part below the sockets.
type scale struct {
	e     *env
	m     *meter
	nodes []*scaleNode
	topic string // its key
	user  func(i int) string
}

// node returns the node of user i.
func (s *scale) node(i int) int { return i % len(s.nodes) }

// keepAlive refreshes every instance, between measurements.
func (s *scale) keepAlive(ctx context.Context) error {
	for _, n := range s.nodes {
		r, err := n.bp.RefreshPresence(ctx, n.inst)
		if err != nil {
			return fmt.Errorf("presence: refresh %s: %w", n.inst, err)
		}
		if r.Lost {
			return fmt.Errorf("presence: instance %s lost", n.inst)
		}
	}
	return nil
}

// writeUsers sets users [from, to) to sessions in each key of keys, node
// by node in calls of presenceCallUpdates. With alone, each user is one
// call of its own.
func (s *scale) writeUsers(ctx context.Context, from, to, sessions int, alone bool, keys ...func(user string) string) error {
	per := make([][]backplane.PresenceUpdate, len(s.nodes))
	for i := from; i < to; i++ {
		u := s.user(i)
		var ups []backplane.PresenceUpdate
		for _, k := range keys {
			ups = append(ups, backplane.PresenceUpdate{Key: k(u), Member: u, Sessions: sessions})
		}
		if alone {
			if err := s.nodes[s.node(i)].write(ctx, ups); err != nil {
				return err
			}
			continue
		}
		per[s.node(i)] = append(per[s.node(i)], ups...)
	}
	for n, ups := range per {
		if err := s.nodes[n].write(ctx, ups); err != nil {
			return err
		}
	}
	return nil
}

// measure returns what f cost, per one of n operations.
func (s *scale) measure(ctx context.Context, n int, f func() error) (opCost, error) {
	if err := s.keepAlive(ctx); err != nil {
		return opCost{}, err
	}
	a, err := s.m.snapshot()
	if err != nil {
		return opCost{}, err
	}
	if err := f(); err != nil {
		return opCost{}, err
	}
	b, err := s.m.snapshot()
	if err != nil {
		return opCost{}, err
	}
	return between(a, b).cost(n), nil
}

// reads measures n calls of read, its cost and its wall time.
func (s *scale) reads(ctx context.Context, n int, read func(i int) error) (opCost, error) {
	durs := make([]time.Duration, n)
	c, err := s.measure(ctx, n, func() error {
		for i := range n {
			t := time.Now()
			if err := read(i); err != nil {
				return err
			}
			durs[i] = time.Since(t)
		}
		return nil
	})
	return withTimes(c, durs), err
}

func userKey(u string) string { return "u:" + u }

// presenceScale is the part below the sockets.
func (e *env) presenceScale(ctx context.Context, addr string, m *meter, nodes int, fig *presenceFigures) error {
	wc := &wireCount{}
	m.clients = wc
	prefix := e.tag + "s:"
	s := &scale{e: e, m: m, topic: "t:" + e.topic()}
	s.user = func(i int) string { return e.userPrefix() + strconv.Itoa(i) }
	defer func() {
		for _, n := range s.nodes {
			_ = n.bp.Close()
			_ = n.client.Close()
		}
	}()
	log := slog.New(e.hubLog)
	for i := range nodes {
		client := goredis.NewClient(&goredis.Options{Addr: addr, Dialer: wc.dialer()})
		bp, err := wsredis.NewPubSub(client, &wsredis.Options{Prefix: prefix, PresenceTTL: presenceScaleTTL, Logger: log})
		if err != nil {
			_ = client.Close()
			return err
		}
		s.nodes = append(s.nodes, &scaleNode{bp: bp, client: client, inst: fmt.Sprintf("%s-n%d.scale", e.tag, i+1)})
	}
	topicKey := func(string) string { return s.topic }
	users, members, reads := e.cfg.users, e.cfg.members, e.cfg.reads
	p0 := s.nodes[0].bp

	// Warm up: load the scripts, open the connections.
	if err := s.keepAlive(ctx); err != nil {
		return err
	}
	warm := "warm-up"
	for _, n := range s.nodes {
		for _, sessions := range []int{1, 0} {
			if err := n.write(ctx, []backplane.PresenceUpdate{{Key: "t:" + warm, Member: warm, Sessions: sessions}}); err != nil {
				return err
			}
		}
	}
	if _, err := p0.PresenceCount(ctx, s.topic); err != nil {
		return err
	}
	if _, _, err := p0.PresenceMember(ctx, userKey(warm), warm); err != nil {
		return err
	}
	if _, _, err := p0.PresenceMembers(ctx, s.topic, "", presencePage); err != nil {
		return err
	}

	// Load the users, then the topic.
	if err := s.keepAlive(ctx); err != nil {
		return err
	}
	s0, err := m.snapshot()
	if err != nil {
		return err
	}
	if err := s.writeUsers(ctx, 0, users, 1, false, userKey); err != nil {
		return err
	}
	s1, err := m.snapshot()
	if err != nil {
		return err
	}
	if err := s.keepAlive(ctx); err != nil {
		return err
	}
	s2, err := m.snapshot()
	if err != nil {
		return err
	}
	if err := s.writeUsers(ctx, 0, members, 1, false, topicKey); err != nil {
		return err
	}
	s3, err := m.snapshot()
	if err != nil {
		return err
	}
	load := s1.at.Sub(s0.at) + s3.at.Sub(s2.at)
	fig.LoadUpdatesPerS = math.Round(float64(users+members) / load.Seconds())
	fig.MemPerUser = round(float64(s1.mem-s0.mem)/float64(users), 1)
	fig.MemPerMember = round(float64(s3.mem-s2.mem)/float64(members), 1)
	fig.RedisKeysPerUser = round(float64(s1.keys-s0.keys)/float64(users), 3)
	e.logf("presence: %d users and %d topic members written in %v (%.0f updates/s); Redis memory %d -> %d -> %d bytes, keys %d -> %d",
		users, members, load.Round(time.Millisecond), fig.LoadUpdatesPerS, s0.mem, s1.mem, s3.mem, s0.keys, s3.keys)
	e.logf("presence: loading the users, the backplanes wrote %d bytes (Redis read %d) and read %d (Redis wrote %d)",
		s1.cout-s0.cout, s1.in-s0.in, s1.cin-s0.cin, s1.out-s0.out)
	s.logMemory(prefix)
	if n, err := p0.PresenceCount(ctx, s.topic); err != nil || n != members {
		return fmt.Errorf("presence: topic count %d, want %d (err %v)", n, members, err)
	}

	// Connects and disconnects: users past the loaded ones come online
	// and join the topic, then leave; batched, then one call each.
	conns := e.cfg.conns
	both := []func(string) string{userKey, topicKey}
	steps := []struct {
		cost     *opCost
		from     int
		sessions int
		alone    bool
	}{
		{&fig.Connect, users, 1, false},
		{&fig.Disconnect, users, 0, false},
		{&fig.ConnectAlone, users + conns, 1, true},
		{&fig.DisconnectAlone, users + conns, 0, true},
	}
	for _, st := range steps {
		c, err := s.measure(ctx, conns, func() error {
			return s.writeUsers(ctx, st.from, st.from+conns, st.sessions, st.alone, both...)
		})
		if err != nil {
			return err
		}
		*st.cost = c
	}

	// Reads at full size.
	if fig.Online, err = s.reads(ctx, reads, func(int) error {
		u := s.user(rand.IntN(users))
		n, _, err := p0.PresenceMember(ctx, userKey(u), u)
		if err == nil && n != 1 {
			err = fmt.Errorf("presence: %s has %d sessions, want 1", u, n)
		}
		return err
	}); err != nil {
		return err
	}
	if fig.TopicCount, err = s.countReads(ctx, s.topic, members); err != nil {
		return err
	}
	if fig.TopicMembersPage, err = s.pageReads(ctx, s.topic, members); err != nil {
		return err
	}

	// A refresh, and the heartbeat it makes.
	n0 := s.nodes[0]
	if fig.Refresh, err = s.reads(ctx, reads, func(int) error {
		r, err := n0.bp.RefreshPresence(ctx, n0.inst)
		if err == nil && (r.Lost || len(r.Changes) > 0) {
			err = fmt.Errorf("presence: refresh of %s: lost %v, %d changes", n0.inst, r.Lost, len(r.Changes))
		}
		return err
	}); err != nil {
		return err
	}
	hb := fig.Refresh
	hb.P50Us, hb.P99Us = 0, 0
	fig.HeartbeatPerNodeS = scaleCost(hb, 3/presenceDefaultTTL.Seconds())

	// A second topic, grown.
	grow := "t:" + e.tag + "-grow"
	growKey := func(string) string { return grow }
	if err := s.keepAlive(ctx); err != nil {
		return err
	}
	g0, err := m.snapshot()
	if err != nil {
		return err
	}
	have := 0
	for _, size := range scaleSizes(users) {
		if err := s.keepAlive(ctx); err != nil {
			return err
		}
		if err := s.writeUsers(ctx, have, size, 1, false, growKey); err != nil {
			return err
		}
		have = size
		g, err := m.snapshot()
		if err != nil {
			return err
		}
		p := scalePoint{Members: size, MemPerMember: round(float64(g.mem-g0.mem)/float64(size), 1)}
		if p.Count, err = s.countReads(ctx, grow, size); err != nil {
			return err
		}
		if p.Page, err = s.pageReads(ctx, grow, size); err != nil {
			return err
		}
		fig.Scaling = append(fig.Scaling, p)
		e.logf("presence: topic of %d: count p50 %.1fµs p99 %.1fµs, %.0f+%.0f bytes; page p50 %.1fµs p99 %.1fµs, %.0f+%.0f bytes",
			size, p.Count.P50Us, p.Count.P99Us, p.Count.InBytes, p.Count.OutBytes, p.Page.P50Us, p.Page.P99Us, p.Page.InBytes, p.Page.OutBytes)
	}
	return nil
}

// logMemory logs what the Redis keys of user 0 and of the topic take
// (MEMORY USAGE), for the figures' breakdown.
func (s *scale) logMemory(prefix string) {
	u, inst := s.user(0), s.nodes[0].inst
	base := prefix + "p{:" + userKey(u) + "}"
	tbase := prefix + "p{:" + s.topic + "}"
	esc := strings.NewReplacer("%", "%25", "}", "%7D").Replace(inst)
	var parts []string
	for _, k := range []string{base, base + ":m", base + ":i", base + ":i:" + esc,
		prefix + "pk:" + inst, tbase, tbase + ":m", tbase + ":i", tbase + ":i:" + esc} {
		v, err := s.m.do("MEMORY", "USAGE", k, "SAMPLES", "0")
		n, _ := v.(int64)
		if err != nil {
			s.e.logf("presence: MEMORY USAGE %s: %v", k, err)
		}
		parts = append(parts, fmt.Sprintf("%s=%d", strings.TrimPrefix(k, prefix), n))
	}
	s.e.logf("presence: MEMORY USAGE of user 0's keys, of %s's key set and of the topic's keys: %s", inst, strings.Join(parts, " "))
}

// scaleSizes are 1%, 10% and 100% of users, those that are distinct and
// not 0.
func scaleSizes(users int) []int {
	var out []int
	for _, n := range []int{users / 100, users / 10, users} {
		if n > 0 && (len(out) == 0 || out[len(out)-1] != n) {
			out = append(out, n)
		}
	}
	return out
}

// countReads measures counts of key, which has want members.
func (s *scale) countReads(ctx context.Context, key string, want int) (opCost, error) {
	p := s.nodes[0].bp
	return s.reads(ctx, s.e.cfg.reads, func(int) error {
		n, err := p.PresenceCount(ctx, key)
		if err == nil && n != want {
			err = fmt.Errorf("presence: count of %s is %d, want %d", key, n, want)
		}
		return err
	})
}

// pageReads measures pages of key, which has want members, walking it
// from page to page and from its end back to its start.
func (s *scale) pageReads(ctx context.Context, key string, want int) (opCost, error) {
	p := s.nodes[0].bp
	cursor := ""
	return s.reads(ctx, s.e.cfg.reads, func(int) error {
		page, next, err := p.PresenceMembers(ctx, key, cursor, presencePage)
		if err == nil && (len(page) == 0 || len(page) > presencePage || (next != "" && len(page) != presencePage)) {
			err = fmt.Errorf("presence: a page of %s has %d members (next %q), of %d", key, len(page), next, want)
		}
		cursor = next
		return err
	})
}

// scaleCost returns c times f, for a rate.
func scaleCost(c opCost, f float64) opCost {
	return usageOf(c).scaled(f).cost(1)
}

// ---- through the hub

// presenceHubs is the part through real hubs and sockets.
func (e *env) presenceHubs(ctx context.Context, addr string, m *meter, nodes int, fig *presenceFigures) (err error) {
	wc := &wireCount{}
	m.clients = wc
	prefix := e.tag + "h:"
	conns := e.cfg.conns
	hf := &fig.Hub
	hf.Conns = conns
	hubs, clients, err := startPresenceHubs(ctx, e, addr, prefix, nodes, wc)
	defer func() {
		// Before the server stops: clients, hubs, then their Redis clients.
		if e.child != nil {
			err = errors.Join(err, e.child.stop())
		}
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
		defer cancel()
		if hubs != nil {
			err = errors.Join(err, hubs.close(cctx))
		}
		for _, c := range clients {
			_ = c.Close()
		}
	}()
	if err != nil {
		return err
	}
	w := &hubWatch{m: m, prefix: prefix, topic: "t:" + e.topic(), nodes: nodes}
	// Every hub has registered its instance.
	if err := w.until(ctx, func() (bool, error) {
		insts, err := w.instances()
		return len(insts) == nodes, err
	}); err != nil {
		return err
	}

	// Connect.
	a, err := m.snapshot()
	if err != nil {
		return err
	}
	if err := e.start(ctx, hubs, conns); err != nil {
		return err
	}
	b, err := w.settle(ctx, conns, conns+min(nodes, conns))
	if err != nil {
		return err
	}
	connect := between(a, b)

	// Idle, with the clients connected.
	i0, err := m.snapshot()
	if err != nil {
		return err
	}
	if !sleepUntil(ctx, i0.at.Add(e.cfg.idle)) {
		return ctx.Err()
	}
	i1, err := m.snapshot()
	if err != nil {
		return err
	}
	idleS := i1.at.Sub(i0.at).Seconds()
	idle := between(i0, i1).scaled(1 / idleS) // per second, all nodes
	hf.IdleS = round(idleS, 3)
	hf.IdlePerNodeS = idle.cost(nodes)
	bg := newBackground(between(i0, i1), usageOf(fig.Refresh))
	e.logf("presence: hub: idle for %v: %.0f probes, %.0f refreshes; a probe costs %.0f+%.0f bytes",
		i1.at.Sub(i0.at).Round(time.Millisecond), between(i0, i1).sent["publish"], between(i0, i1).ran[heartbeatMark],
		bg.probe.in, bg.probe.out)
	hf.Connect = bg.without(connect).cost(conns)

	// Reads through the hub.
	h := hubs.hubs[0]
	topic := e.topic()
	hubReads := func(read func() error) (opCost, error) {
		durs := make([]time.Duration, e.cfg.reads)
		a, err := m.snapshot()
		if err != nil {
			return opCost{}, err
		}
		for i := range durs {
			t := time.Now()
			if err := read(); err != nil {
				return opCost{}, err
			}
			durs[i] = time.Since(t)
		}
		b, err := m.snapshot()
		if err != nil {
			return opCost{}, err
		}
		return withTimes(bg.without(between(a, b)).cost(len(durs)), durs), nil
	}
	if hf.Online, err = hubReads(func() error {
		u := e.userPrefix() + strconv.Itoa(rand.IntN(conns))
		n, err := h.Online(ctx, u)
		if err == nil && n != 1 {
			err = fmt.Errorf("presence: hub: %s has %d sessions, want 1", u, n)
		}
		return err
	}); err != nil {
		return err
	}
	if hf.TopicCount, err = hubReads(func() error {
		n, err := h.TopicCount(ctx, topic)
		if err == nil && n != conns {
			err = fmt.Errorf("presence: hub: topic count %d, want %d", n, conns)
		}
		return err
	}); err != nil {
		return err
	}
	cursor := ""
	if hf.TopicMembersPage, err = hubReads(func() error {
		page, next, err := h.TopicMembers(ctx, topic, cursor, presencePage)
		if err == nil && len(page) == 0 {
			err = errors.New("presence: hub: an empty page of members")
		}
		cursor = next
		return err
	}); err != nil {
		return err
	}

	// Disconnect: the client process closes every connection and exits.
	a, err = m.snapshot()
	if err != nil {
		return err
	}
	if err := e.child.stop(); err != nil {
		return err
	}
	if err := waitConns0(ctx, hubs); err != nil {
		return err
	}
	b, err = w.settle(ctx, 0, 0)
	if err != nil {
		return err
	}
	hf.Disconnect = bg.without(between(a, b)).cost(conns)
	e.logf("presence: hub: connect %.2f requests %.1f commands %.0f+%.0f bytes; disconnect %.2f requests %.1f commands %.0f+%.0f bytes; idle per node %.2f requests/s %.0f+%.0f bytes/s",
		hf.Connect.Requests, hf.Connect.Cmds, hf.Connect.InBytes, hf.Connect.OutBytes,
		hf.Disconnect.Requests, hf.Disconnect.Cmds, hf.Disconnect.InBytes, hf.Disconnect.OutBytes,
		hf.IdlePerNodeS.Requests, hf.IdlePerNodeS.InBytes, hf.IdlePerNodeS.OutBytes)
	hubs.describe(e.log)
	return nil
}

// heartbeatMark is the command that only the presence heartbeat script
// runs.
const heartbeatMark = "zrangebyscore"

// background is the idle traffic of the hubs, taken out of what they do
// meanwhile: probes of their subscriptions (the only PUBLISH commands
// here) and presence refreshes (the only scripts that run heartbeatMark).
type background struct {
	probe, refresh usage // one of each
}

// newBackground finds a probe's cost in idle, which refreshes of cost
// refresh are part of.
func newBackground(idle, refresh usage) background {
	bg := background{refresh: refresh, probe: usage{sent: map[string]float64{}, ran: map[string]float64{}}}
	if p := idle.sent["publish"]; p > 0 {
		bg.probe = idle.plus(refresh, -idle.ran[heartbeatMark]).scaled(1 / p)
	}
	return bg
}

// without returns u less its probes and refreshes.
func (bg background) without(u usage) usage {
	return u.plus(bg.probe, -u.sent["publish"]).plus(bg.refresh, -u.ran[heartbeatMark])
}

// waitConns0 waits until the hubs hold no session.
func waitConns0(ctx context.Context, hubs *hubCluster) error {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for hubs.conns() > 0 {
		select {
		case <-tick.C:
		case <-ctx.Done():
			return fmt.Errorf("hubs still hold %d sessions: %w", hubs.conns(), ctx.Err())
		}
	}
	return nil
}

// startPresenceHubs starts nodes hubs, each on a Redis PubSub backplane of
// its own on addr with the defaults but prefix, whose connections wc
// counts. The caller closes the hubs, then the clients.
func startPresenceHubs(ctx context.Context, e *env, addr, prefix string, nodes int, wc *wireCount) (*hubCluster, []*goredis.Client, error) {
	cfg := hubConfig{nodes: nodes, tag: e.tag, topic: e.topic(), queue: e.cfg.queue, log: slog.New(e.hubLog)}
	c := &hubCluster{}
	var clients []*goredis.Client
	for n := 1; n <= nodes; n++ {
		client := goredis.NewClient(&goredis.Options{Addr: addr, Dialer: wc.dialer()})
		clients = append(clients, client)
		if err := client.Ping(ctx).Err(); err != nil {
			return c, clients, fmt.Errorf("redis for node %d: %w", n, err)
		}
		bp, err := wsredis.NewPubSub(client, &wsredis.Options{Prefix: prefix, Logger: cfg.log})
		if err != nil {
			return c, clients, err
		}
		c.bps = append(c.bps, bp)
		nodeID := fmt.Sprintf("%s-n%d", cfg.tag, n)
		hub, err := wshub.New(hubOptions(cfg, bp, nodeID))
		if err != nil {
			return c, clients, fmt.Errorf("hub %d: %w", n, err)
		}
		c.hubs = append(c.hubs, hub)
		mux := http.NewServeMux()
		mux.Handle("/ws", hub)
		l, err := listen(mux, cfg.log)
		if err != nil {
			return c, clients, err
		}
		c.lns = append(c.lns, l)
	}
	return c, clients, nil
}

// hubWatch tells, from Redis, when the hubs' presence writes are done.
type hubWatch struct {
	m      *meter
	prefix string
	topic  string // the topic's presence key
	nodes  int
}

// instances returns the presence instances registered.
func (w *hubWatch) instances() ([]string, error) {
	v, err := w.m.do("ZRANGE", w.prefix+"pn", "0", "-1")
	if err != nil {
		return nil, err
	}
	list, _ := v.([]any)
	var out []string
	for _, x := range list {
		if s, ok := x.(string); ok {
			out = append(out, s)
		}
	}
	return out, nil
}

// entries returns how many members the topic has and in how many keys the
// instances have entries, in all.
func (w *hubWatch) entries() (members, keys int64, err error) {
	v, err := w.m.do("HLEN", w.prefix+"p{:"+w.topic+"}")
	if err != nil {
		return 0, 0, err
	}
	members, _ = v.(int64)
	insts, err := w.instances()
	if err != nil {
		return 0, 0, err
	}
	for _, in := range insts {
		v, err := w.m.do("SCARD", w.prefix+"pk:"+in)
		if err != nil {
			return 0, 0, err
		}
		n, _ := v.(int64)
		keys += n
	}
	return members, keys, nil
}

// until polls done until it reports true.
func (w *hubWatch) until(ctx context.Context, done func() (bool, error)) error {
	for {
		ok, err := done()
		if err != nil || ok {
			return err
		}
		if !sleepUntil(ctx, time.Now().Add(presencePoll)) {
			return fmt.Errorf("presence: waiting for the hubs' writes: %w", ctx.Err())
		}
	}
}

// settle waits until the topic has members members and the instances have
// entries in keys keys, and then until nothing is written for a few polls
// (subscriptions included), and returns the last snapshot.
func (w *hubWatch) settle(ctx context.Context, members, keys int) (counters, error) {
	var got [2]int64
	if err := w.until(ctx, func() (bool, error) {
		m, k, err := w.entries()
		got = [2]int64{m, k}
		return m == int64(members) && k == int64(keys), err
	}); err != nil {
		return counters{}, fmt.Errorf("%w (topic members %d of %d, keys %d of %d)", err, got[0], members, got[1], keys)
	}
	writes := func(c counters) (n int64) {
		for _, k := range presenceQuietWrites {
			n += c.ran[k] + c.sent[k]
		}
		return n
	}
	last, err := w.m.snapshot()
	if err != nil {
		return counters{}, err
	}
	for still := 0; still < presenceQuiet; {
		if !sleepUntil(ctx, time.Now().Add(presencePoll)) {
			return counters{}, ctx.Err()
		}
		c, err := w.m.snapshot()
		if err != nil {
			return counters{}, err
		}
		if writes(c) == writes(last) {
			still++
		} else {
			still = 0
		}
		last = c
	}
	return last, nil
}

// ---- the meter: Redis's counters on a connection of its own

// meter sends commands to Redis on a plain connection whose bytes and
// commands it counts, so that its snapshots leave them out.
type meter struct {
	conn    net.Conn
	r       *bufio.Reader
	sent    int64            // bytes written
	recv    int64            // bytes read
	cmds    map[string]int64 // commands answered, by name
	clients *wireCount       // the measured clients, for snapshots
}

func dialMeter(ctx context.Context, addr string) (*meter, error) {
	d := net.Dialer{Timeout: meterDialTimeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	m := &meter{conn: conn, cmds: make(map[string]int64), clients: &wireCount{}}
	m.r = bufio.NewReader(readCounter{conn, &m.recv})
	return m, nil
}

func (m *meter) close() { _ = m.conn.Close() }

type readCounter struct {
	r io.Reader
	n *int64
}

func (rc readCounter) Read(p []byte) (int, error) {
	n, err := rc.r.Read(p)
	*rc.n += int64(n)
	return n, err
}

// do sends one command and returns its reply: a string, an int64, nil or
// a []any of them.
func (m *meter) do(args ...string) (any, error) {
	if err := m.conn.SetDeadline(time.Now().Add(meterTimeout)); err != nil {
		return nil, err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	n, err := io.WriteString(m.conn, b.String())
	m.sent += int64(n)
	if err != nil {
		return nil, fmt.Errorf("meter: %s: %w", args[0], err)
	}
	v, err := readReply(m.r)
	if err != nil {
		return nil, fmt.Errorf("meter: %s: %w", args[0], err)
	}
	m.cmds[strings.ToLower(args[0])]++
	return v, nil
}

// readReply reads one RESP2 reply.
func readReply(r *bufio.Reader) (any, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return nil, errors.New("empty reply")
	}
	switch line[0] {
	case '+':
		return line[1:], nil
	case '-':
		return nil, errors.New(line[1:])
	case ':':
		return strconv.ParseInt(line[1:], 10, 64)
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return nil, err
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return nil, err
		}
		out := make([]any, n)
		for i := range out {
			if out[i], err = readReply(r); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("unexpected reply %q", line)
}

// version returns redis-server's version.
func (m *meter) version() (string, error) {
	v, err := m.do("INFO", "server")
	if err != nil {
		return "", err
	}
	s, _ := v.(string)
	for _, line := range strings.Split(s, "\r\n") {
		if v, ok := strings.CutPrefix(line, "redis_version:"); ok {
			return v, nil
		}
	}
	return "", errors.New("meter: no redis_version in INFO")
}

// snapshot reads Redis's counters and takes the meter's part out of them.
// Redis counts a command's input before it runs and its reply once written
// after, and its commandstats once it has run: a snapshot's counters
// include its own INFO request, not its reply nor its call.
func (m *meter) snapshot() (counters, error) {
	before, recv := copyCounts(m.cmds), m.recv
	v, err := m.do("INFO", "stats", "commandstats", "memory", "keyspace")
	if err != nil {
		return counters{}, err
	}
	c := counters{at: time.Now(), ran: make(map[string]int64), sent: m.clients.snapshot(),
		cin: m.clients.in.Load(), cout: m.clients.out.Load(), trips: m.clients.trips.Load()}
	s, _ := v.(string)
	var used, clients int64
	for _, line := range strings.Split(s, "\r\n") {
		k, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		num := func() int64 { n, _ := strconv.ParseInt(val, 10, 64); return n }
		switch {
		case k == "total_net_input_bytes":
			c.in = num() - m.sent
		case k == "total_net_output_bytes":
			c.out = num() - recv
		case k == "used_memory":
			used = num()
		case k == "mem_clients_normal":
			clients = num()
		case k == "db0":
			for _, f := range strings.Split(val, ",") {
				if n, ok := strings.CutPrefix(f, "keys="); ok {
					c.keys, _ = strconv.ParseInt(n, 10, 64)
				}
			}
		case strings.HasPrefix(k, "cmdstat_"):
			name := strings.TrimPrefix(k, "cmdstat_")
			calls, _, _ := strings.Cut(strings.TrimPrefix(val, "calls="), ",")
			n, _ := strconv.ParseInt(calls, 10, 64)
			c.ran[name] = n - before[name]
		}
	}
	c.mem = used - clients
	return c, nil
}

func copyCounts(m map[string]int64) map[string]int64 {
	out := make(map[string]int64, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// ---- the clients' side: commands sent, bytes

// wireCount counts what the go-redis clients whose Dialer it made send
// and receive: bytes, and commands by name, read from the RESP arrays
// they write.
type wireCount struct {
	in, out atomic.Int64
	trips   atomic.Int64 // writes on a connection that are its first or follow a read
	mu      sync.Mutex
	sent    map[string]int64
}

func (w *wireCount) snapshot() map[string]int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return copyCounts(w.sent)
}

func (w *wireCount) add(name string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.sent == nil {
		w.sent = make(map[string]int64)
	}
	w.sent[name]++
}

// dialer returns a go-redis Options.Dialer whose connections w counts.
func (w *wireCount) dialer() func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{Timeout: meterDialTimeout, KeepAlive: 5 * time.Minute}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &countedConn{Conn: c, w: w}, nil
	}
}

// countedConn is a connection of a counted client.
type countedConn struct {
	net.Conn
	w       *wireCount
	mu      sync.Mutex // guards what follows
	sc      respScanner
	writing bool // the last call was a write
}

func (c *countedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.w.in.Add(int64(n))
	if n > 0 {
		c.mu.Lock()
		c.writing = false
		c.mu.Unlock()
	}
	return n, err
}

func (c *countedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.w.out.Add(int64(n))
	c.mu.Lock()
	if !c.writing && n > 0 {
		c.writing = true
		c.w.trips.Add(1)
	}
	c.sc.scan(p[:n], c.w.add)
	c.mu.Unlock()
	return n, err
}

// respScanner finds the commands in a stream of RESP requests (arrays of
// bulk strings, as go-redis writes them), written in pieces of any size.
type respScanner struct {
	state int
	num   int64  // the length being read
	args  int64  // bulk strings left in the command
	left  int64  // bytes left in the bulk string, its CRLF included
	size  int64  // of the bulk string
	name  []byte // the command's name, so far
	first bool   // reading the command's name
}

// States of a respScanner.
const (
	respArray    = iota // before '*'
	respArrayLen        // in the array's length
	respBulk            // before '$'
	respBulkLen         // in the bulk string's length
	respBody            // in the bulk string
)

// scan reads p, calling found with each complete command's name, in lower
// case.
func (s *respScanner) scan(p []byte, found func(string)) {
	for i := 0; i < len(p); {
		switch s.state {
		case respArray, respBulk:
			if p[i] == '*' && s.state == respArray {
				s.state, s.num = respArrayLen, 0
			} else if p[i] == '$' && s.state == respBulk {
				s.state, s.num = respBulkLen, 0
			}
			i++
		case respArrayLen, respBulkLen:
			c := p[i]
			i++
			switch {
			case c >= '0' && c <= '9':
				s.num = s.num*10 + int64(c-'0')
			case c == '\n' && s.state == respArrayLen:
				s.args, s.first, s.name = s.num, true, s.name[:0]
				s.state = respBulk
				if s.args <= 0 {
					s.state = respArray
				}
			case c == '\n':
				s.size, s.left, s.state = s.num, s.num+2, respBody
			}
		case respBody:
			n := min(int64(len(p)-i), s.left)
			if s.first {
				done := s.size + 2 - s.left // bytes of the body read before
				take := max(min(n, s.size-done), 0)
				if len(s.name) < 64 {
					s.name = append(s.name, p[i:i+int(min(take, int64(64-len(s.name))))]...)
				}
			}
			i += int(n)
			s.left -= n
			if s.left > 0 {
				continue
			}
			s.first = false
			s.state = respBulk
			if s.args--; s.args == 0 {
				found(strings.ToLower(string(s.name)))
				s.state = respArray
			}
		}
	}
}

// ---- redis-server

// redisServer is a redis-server process the tool started.
type redisServer struct {
	cmd    *exec.Cmd
	dir    string
	addr   string
	exited chan struct{}
	err    error // of Wait, once exited
}

func (s *redisServer) url() string { return "redis://" + s.addr + "/0" }

// startRedisServer starts redis-server on a free port of 127.0.0.1, without
// persistence, in a temporary directory, and waits until it answers PING.
// It is killed when ctx ends; stop stops it before.
func startRedisServer(ctx context.Context, log io.Writer) (*redisServer, error) {
	bin, err := redisBinary()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "wshub-bench-redis-")
	if err != nil {
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		s, err := launchRedis(ctx, bin, dir)
		if err == nil {
			fmt.Fprintf(log, "wshub-bench: presence: redis-server (pid %d) on %s, in %s\n", s.cmd.Process.Pid, s.addr, dir)
			return s, nil
		}
		if attempt == 5 || ctx.Err() != nil {
			_ = os.RemoveAll(dir)
			return nil, err
		}
	}
}

// redisBinary returns the path of redis-server.
func redisBinary() (string, error) {
	if path, err := exec.LookPath("redis-server"); err == nil {
		return path, nil
	}
	for _, path := range []string{"/usr/bin/redis-server", "/usr/local/bin/redis-server", "/opt/homebrew/bin/redis-server"} {
		if fi, err := os.Stat(path); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return path, nil
		}
	}
	return "", errors.New("presence: redis-server not found in PATH; install the redis-server package (e.g. apt-get install redis-server)")
}

// launchRedis starts one redis-server on a port that was free a moment
// ago, and waits until it answers PING; on failure it is gone.
func launchRedis(ctx context.Context, bin, dir string) (*redisServer, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	logf, err := os.OpenFile(filepath.Join(dir, "redis.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the process has its own copy
	cmd := exec.CommandContext(ctx, bin,
		"--bind", "127.0.0.1", "--port", strconv.Itoa(port),
		"--save", "", "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no",
		"--loglevel", "warning", "--dir", dir)
	cmd.Dir, cmd.Stdout, cmd.Stderr = dir, logf, logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("presence: start %s: %w", bin, err)
	}
	s := &redisServer{cmd: cmd, dir: dir, addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), exited: make(chan struct{})}
	go func() {
		s.err = cmd.Wait()
		close(s.exited)
	}()
	deadline := time.Now().Add(redisReady)
	for {
		c := goredis.NewClient(&goredis.Options{Addr: s.addr, MaxRetries: -1, DialTimeout: meterDialTimeout})
		err = c.Ping(ctx).Err()
		_ = c.Close()
		if err == nil {
			return s, nil
		}
		select {
		case <-s.exited:
			return nil, fmt.Errorf("presence: redis-server on %s exited before answering PING (%v); see %s", s.addr, s.err, filepath.Join(dir, "redis.log"))
		case <-time.After(20 * time.Millisecond):
		case <-ctx.Done():
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			_ = s.kill()
			return nil, fmt.Errorf("presence: redis-server on %s does not answer PING: %v", s.addr, err)
		}
	}
}

// stop stops the server with SIGTERM (SIGKILL if it does not exit soon),
// waits for it, and removes its directory.
func (s *redisServer) stop() error {
	var err error
	if s.cmd.Process.Signal(syscall.SIGTERM) != nil { // no SIGTERM on windows
		return errors.Join(s.kill(), os.RemoveAll(s.dir))
	}
	select {
	case <-s.exited:
	case <-time.After(redisStop):
		err = s.kill()
	}
	return errors.Join(err, os.RemoveAll(s.dir))
}

// kill kills the server and waits for it.
func (s *redisServer) kill() error {
	_ = s.cmd.Process.Kill()
	select {
	case <-s.exited:
		return nil
	case <-time.After(redisStop):
		return fmt.Errorf("presence: redis-server (pid %d) did not exit", s.cmd.Process.Pid)
	}
}
