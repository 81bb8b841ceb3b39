package redis

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/wshub/wshub/backplane"
)

// The presence record (backplane.Presence) lives in these keys, all under
// Options.Prefix (pre):
//
//	pre+"p{:K}"        HASH member -> sessions across the cluster, for
//	                   presence key K (HLEN is the count, HGET a member's)
//	pre+"p{:K}:m"      ZSET of K's members, all with score 0: the index
//	                   that pages by ZRANGEBYLEX
//	pre+"p{:K}:i"      HASH instance -> how many members it has in K
//	pre+"p{:K}:i:<i>"  HASH member -> instance i's sessions in K, with '%'
//	                   and '}' of i escaped as %25 and %7D
//	pre+"pn"           ZSET instance -> end of its lease, in ms of the Redis
//	                   server's clock
//	pre+"pk:<i>"       SET of the keys K where instance i may have entries,
//	                   to remove them when it dies ("" marks the set's life
//	                   with a cluster)
//	pre+"pl:<i>"       the lock of whoever removes dead instance i
//
// The hash tag of K's keys is ":" followed by K up to its first '}': never
// empty, so all of them are in one slot of a Redis Cluster whatever K
// holds, and each update of K is one script there. K's keys are told apart
// by what follows the last '}', which an escaped instance never contains.
//
// An instance is alive while its lease is in the future. An update carries
// the lease's end as the server saw it at the last refresh and is refused
// by the script once the server's clock passes it, so that a write that
// arrives late from an instance that may already be taken for dead is never
// kept. Another instance's refresh takes an instance for dead one second
// (presenceGrace, for the clocks of a cluster's masters) after its lease
// ended, and removes its entries key by key from its key set. Every entry
// is in the key set first: with one Redis the update script adds the key;
// with a cluster, where the set is in another slot, the key is added by a
// command sent before the update, and removed after the update that
// emptied it.

// Bounds of the presence record's work.
const (
	presenceGrace        = time.Second            // clock skew allowed between a cluster's masters
	presenceDeadBatch    = 8                      // dead instances looked at per refresh
	presenceReapKeys     = 2000                   // keys reaped per refresh at most
	presenceReapBatch    = 200                    // keys per reap pipeline
	presenceReapMembers  = 100                    // entries one reap script removes at most
	presenceLockTTL      = 30 * time.Second       // of a reap lock
	presenceSoon         = 5 * time.Millisecond   // Next while dead instances are left
	presenceMaxPage      = 1000                   // members per page at most
	presenceChunk        = 1000                   // updates per pipeline
	presenceMaxInstances = 1000                   // instances PresenceMember returns at most
	presenceMaxLost      = 4096                   // lost instances remembered
	presenceMinTTL       = 100 * time.Millisecond // smallest Options.PresenceTTL
)

var (
	_ backplane.Presence = (*PubSub)(nil)
	_ backplane.Presence = (*Streams)(nil)
)

// presence keeps the record's local state: the leases of the instances
// this process refreshes.
type presence struct {
	write   goredis.UniversalClient // the core's busClient: updates, refreshes, reaping
	read    goredis.UniversalClient // the caller's client: counts and pages
	prefix  string                  // Options.Prefix
	sharded bool                    // a Redis Cluster
	ttl     time.Duration           // Options.PresenceTTL
	id      string                  // holds the reap locks
	ctx     context.Context         // ends on Close
	log     *slog.Logger

	mu     sync.Mutex
	closed bool
	calls  sync.WaitGroup // calls in flight, which Close waits for
	leases map[string]*presenceLease
	lost   map[string]struct{} // instances reported lost
}

// presenceLease is what this process knows of one of its instances.
type presenceLease struct {
	server int64     // end of the lease in ms of the server's clock
	local  time.Time // the same, no later, on this process's clock
	// keys are, with a cluster, the presence keys known to be in the
	// instance's key set: every key where it may have entries.
	keys map[string]struct{}
}

// presenceConfig is what a presence needs from its backplane.
type presenceConfig struct {
	write, read goredis.UniversalClient
	prefix      string
	sharded     bool
	ttl         time.Duration
	id          string
	ctx         context.Context
	log         *slog.Logger
}

func newPresence(cfg presenceConfig) *presence {
	return &presence{
		write: cfg.write, read: cfg.read, prefix: cfg.prefix, sharded: cfg.sharded,
		ttl: cfg.ttl, id: cfg.id, ctx: cfg.ctx, log: cfg.log,
		leases: make(map[string]*presenceLease),
		lost:   make(map[string]struct{}),
	}
}

// RefreshPresence renews instance's lease for Options.PresenceTTL (the
// first call registers it), then removes the entries of dead instances,
// a bounded amount per call: Next is a third of the TTL, or a few
// milliseconds when dead instances are left. It reports Lost, and forgets
// instance, when the instance's lease had ended or Redis lost it (a
// restart without persistence); calls with it are refused from then on.
// See backplane.Presence.
func (c *core) RefreshPresence(ctx context.Context, instance string) (backplane.PresenceRefresh, error) {
	return c.pres.refresh(ctx, instance)
}

// UpdatePresence sets instance's sessions for each update, in order, one
// atomic script per update, pipelined: one round trip per 1000 updates
// with one Redis, and with a cluster one more before the first update
// that gives instance an entry in a key and one after an update that
// leaves it none. It refuses all of them, with an error wrapping
// backplane.ErrUnavailable, when instance's lease has ended (or was not
// renewed by this process), and so does Redis for a write that arrives
// after the lease's end. An update refused by its Limit makes the error
// wrap backplane.ErrOverLimit; the others are applied. Keys must not be
// empty (backplane.ErrInvalidChannel), nor members, nor sessions negative.
func (c *core) UpdatePresence(ctx context.Context, instance string, updates []backplane.PresenceUpdate) ([]backplane.PresenceChange, error) {
	return c.pres.update(ctx, instance, updates)
}

// PresenceCount returns how many members key has: one HLEN.
func (c *core) PresenceCount(ctx context.Context, key string) (int, error) {
	return c.pres.count(ctx, key)
}

// PresenceMember returns member's sessions in key and up to 1000 instances
// that hold them: one script, reading each instance's entries of key.
func (c *core) PresenceMember(ctx context.Context, key, member string) (int, []string, error) {
	return c.pres.member(ctx, key, member)
}

// PresenceMembers returns a page of key's members after cursor, the last
// member of the previous page: up to limit (below 1 means 100, above 1000
// means 1000) in byte order. One script: a ZRANGEBYLEX and an HMGET.
func (c *core) PresenceMembers(ctx context.Context, key, cursor string, limit int) ([]backplane.PresenceEntry, string, error) {
	return c.pres.members(ctx, key, cursor, limit)
}

// presenceNames are the names of a presence key's Redis keys.
type presenceNames struct {
	total, members, index string
}

func (p *presence) names(key string) presenceNames {
	base := p.prefix + "p{:" + key + "}"
	return presenceNames{total: base, members: base + ":m", index: base + ":i"}
}

// instanceEscaper escapes an instance for the name of its hash in a key,
// as memberScript does.
var instanceEscaper = strings.NewReplacer("%", "%25", "}", "%7D")

// instance returns the name of inst's hash of entries in the key of n.
func (n presenceNames) instance(inst string) string {
	return n.index + ":" + instanceEscaper.Replace(inst)
}

// scriptKeys are the keys of updateScript and reapScript for inst.
func (n presenceNames) scriptKeys(inst string) []string {
	return []string{n.total, n.members, n.index, n.instance(inst)}
}

func (p *presence) leaseKey() string           { return p.prefix + "pn" }
func (p *presence) keySet(inst string) string  { return p.prefix + "pk:" + inst }
func (p *presence) lockKey(inst string) string { return p.prefix + "pl:" + inst }

// Errors of bad input.
var (
	errNoInstance = errors.New("redis backplane: empty presence instance")
	errNoMember   = errors.New("redis backplane: empty presence member")
)

// begin starts a call: it returns ctx, ending also on Close, and the
// function that ends the call, or backplane.ErrClosed.
func (p *presence) begin(ctx context.Context) (context.Context, func(), error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, nil, backplane.ErrClosed
	}
	p.calls.Add(1)
	p.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(p.ctx, cancel)
	return ctx, func() {
		stop()
		cancel()
		p.calls.Done()
	}, nil
}

// close refuses new calls and waits for those in flight, which end soon:
// their contexts end with the backplane's, which must have ended.
func (p *presence) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.calls.Wait()
}

// fail wraps an error of Redis for what failed.
func (p *presence) fail(what string, err error) error {
	if p.ctx.Err() != nil {
		return fmt.Errorf("redis backplane: %s: %w", what, backplane.ErrClosed)
	}
	return fmt.Errorf("%w: %s: %w", backplane.ErrUnavailable, what, err)
}

// malformed is the error of a reply that is not what the script returns.
func (p *presence) malformed(what string, v any) error {
	return fmt.Errorf("%w: %s: unexpected reply %T", backplane.ErrUnavailable, what, v)
}

// pipeline sends n commands, which queue adds to a pipeline, in one round
// trip (per master with a cluster) on client and returns them with the
// error of each (nil when it ran). When Redis lost the scripts (NOSCRIPT)
// it loads them and sends again every command from the first that found
// its script missing, in order: each of them is idempotent.
func (p *presence) pipeline(ctx context.Context, client goredis.UniversalClient, n int, queue func(pipe goredis.Pipeliner, i int) goredis.Cmder) ([]goredis.Cmder, []error) {
	cmds := make([]goredis.Cmder, n)
	errs := make([]error, n)
	from := 0
	for attempt := 0; ; attempt++ {
		pipe := client.Pipeline()
		for i := from; i < n; i++ {
			cmds[i] = queue(pipe, i)
		}
		_, execErr := pipe.Exec(ctx)
		missing := -1
		for i := from; i < n; i++ {
			errs[i] = cmdErr(cmds[i], execErr)
			if missing < 0 && errs[i] != nil && goredis.HasErrorPrefix(errs[i], "NOSCRIPT") {
				missing = i
			}
		}
		if missing < 0 || attempt > 0 || p.loadScripts(ctx, client) != nil {
			return cmds, errs
		}
		from = missing
	}
}

// loadScripts loads every presence script into Redis (every master of a
// cluster).
func (p *presence) loadScripts(ctx context.Context, client goredis.UniversalClient) error {
	for _, s := range presenceScripts {
		if err := s.Load(ctx, client).Err(); err != nil {
			return err
		}
	}
	return nil
}

// refresh implements RefreshPresence.
func (p *presence) refresh(ctx context.Context, inst string) (backplane.PresenceRefresh, error) {
	if inst == "" {
		return backplane.PresenceRefresh{}, errNoInstance
	}
	ctx, done, err := p.begin(ctx)
	if err != nil {
		return backplane.PresenceRefresh{}, err
	}
	defer done()
	p.mu.Lock()
	_, lost := p.lost[inst]
	l := p.leases[inst]
	hasKeys := l != nil && len(l.keys) > 0
	p.mu.Unlock()
	if lost {
		return backplane.PresenceRefresh{Lost: true, Next: p.ttl / 3}, nil
	}
	known := "0"
	if l != nil {
		known = "1"
	}
	// With a cluster, check that the key set of an instance with entries
	// is still there: it is in another master than the lease set.
	guard := hasKeys
	n := 1
	if guard {
		n = 2
	}
	sent := time.Now()
	cmds, errs := p.pipeline(ctx, p.write, n, func(pipe goredis.Pipeliner, i int) goredis.Cmder {
		if i == 1 {
			return pipe.SIsMember(ctx, p.keySet(inst), "")
		}
		return heartbeatScript.EvalSha(ctx, pipe, []string{p.leaseKey()}, inst, p.ttl.Milliseconds(),
			known, presenceGrace.Milliseconds(), presenceDeadBatch)
	})
	if errs[0] != nil {
		return backplane.PresenceRefresh{}, p.fail("refresh presence", errs[0])
	}
	isLost, now, dead, err := parseHeartbeat(cmds[0].(*goredis.Cmd).Val())
	if err != nil {
		return backplane.PresenceRefresh{}, err
	}
	if isLost {
		p.forget(inst)
	} else {
		p.mu.Lock()
		if l == nil {
			l = &presenceLease{}
			if p.sharded {
				l.keys = make(map[string]struct{})
			}
			p.leases[inst] = l
		}
		l.server = now + p.ttl.Milliseconds()
		l.local = sent.Add(p.ttl)
		p.mu.Unlock()
		if guard {
			if errs[1] != nil {
				return backplane.PresenceRefresh{}, p.fail("refresh presence", errs[1])
			}
			if !cmds[1].(*goredis.BoolCmd).Val() {
				if err := p.repair(ctx, inst, l); err != nil {
					return backplane.PresenceRefresh{}, err
				}
			}
		}
	}
	changes, more := p.reap(ctx, now, dead)
	r := backplane.PresenceRefresh{Lost: isLost, Changes: changes, Next: p.ttl / 3}
	if more {
		r.Next = presenceSoon
	}
	return r, nil
}

// parseHeartbeat parses the reply of heartbeatScript.
func parseHeartbeat(v any) (lost bool, now int64, dead []string, err error) {
	parts, _ := v.([]any)
	if len(parts) != 3 {
		return false, 0, nil, fmt.Errorf("%w: refresh presence: unexpected reply %T", backplane.ErrUnavailable, v)
	}
	l, ok1 := parts[0].(int64)
	now, ok2 := parts[1].(int64)
	list, ok3 := parts[2].([]any)
	if !ok1 || !ok2 || !ok3 || len(list) > presenceDeadBatch {
		return false, 0, nil, fmt.Errorf("%w: refresh presence: malformed reply", backplane.ErrUnavailable)
	}
	for _, d := range list {
		if s, ok := d.(string); ok && s != "" {
			dead = append(dead, s)
		}
	}
	return l == 1, now, dead, nil
}

// forget drops what this process knows of a lost instance and refuses it
// from then on.
func (p *presence) forget(inst string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.leases, inst)
	if len(p.lost) >= presenceMaxLost {
		clear(p.lost)
	}
	p.lost[inst] = struct{}{}
}

// repair puts the keys where inst may have entries back into its key set,
// which Redis lost (a master of a cluster restarted without its data):
// without them, its entries could not be removed when it dies.
func (p *presence) repair(ctx context.Context, inst string, l *presenceLease) error {
	p.mu.Lock()
	keys := make([]string, 0, len(l.keys))
	for k := range l.keys {
		keys = append(keys, k)
	}
	p.mu.Unlock()
	p.log.Warn("redis backplane: the presence key set of an instance was lost; writing it again", "instance", inst, "keys", len(keys))
	n := (len(keys) + presenceChunk - 1) / presenceChunk
	n = max(n, 1)
	_, errs := p.pipeline(ctx, p.write, n, func(pipe goredis.Pipeliner, i int) goredis.Cmder {
		part := keys[i*presenceChunk : min(len(keys), (i+1)*presenceChunk)]
		args := make([]any, 0, len(part)+1)
		args = append(args, "")
		for _, k := range part {
			args = append(args, k)
		}
		return pipe.SAdd(ctx, p.keySet(inst), args...)
	})
	for _, err := range errs {
		if err != nil {
			return p.fail("refresh presence", err)
		}
	}
	return nil
}

// reap removes the entries of the dead instances, as much as the budget
// of one refresh allows, and returns what that changed and whether work is
// left for the next refresh.
func (p *presence) reap(ctx context.Context, now int64, dead []string) (changes []backplane.PresenceChange, more bool) {
	more = len(dead) == presenceDeadBatch
	budget := presenceReapKeys
	cutoff := now - presenceGrace.Milliseconds()
	for _, d := range dead {
		if budget <= 0 {
			return changes, true
		}
		ch, left, err := p.reapInstance(ctx, d, cutoff, &budget)
		changes = append(changes, ch...)
		if err != nil {
			if ctx.Err() == nil {
				p.log.Warn("redis backplane: cannot remove the presence of a dead instance", "instance", d, "err", err)
			}
			return changes, more
		}
		more = more || left
	}
	return changes, more
}

// reapInstance removes the entries of dead instance d under its lock, up to
// *budget keys, and reports whether some are left. It does nothing while
// another process holds the lock. Once d has no key left it is removed
// from the lease set, if its lease still ended before cutoff.
func (p *presence) reapInstance(ctx context.Context, d string, cutoff int64, budget *int) (changes []backplane.PresenceChange, left bool, err error) {
	lock, set := p.lockKey(d), p.keySet(d)
	cmds, errs := p.pipeline(ctx, p.write, 2, func(pipe goredis.Pipeliner, i int) goredis.Cmder {
		if i == 0 {
			return lockScript.EvalSha(ctx, pipe, []string{lock}, p.id, presenceLockTTL.Milliseconds())
		}
		return reapNextScript.EvalSha(ctx, pipe, []string{set}, presenceReapBatch)
	})
	if err := errors.Join(errs...); err != nil {
		return nil, false, err
	}
	if held, _ := cmds[0].(*goredis.Cmd).Int64(); held != 1 {
		return nil, false, nil
	}
	defer func() {
		if !left && err == nil {
			return // unlocked with the instance's removal
		}
		if uerr := unlockScript.Run(ctx, p.write, []string{lock}, p.id).Err(); uerr != nil && err == nil {
			err = uerr
		}
	}()
	keys, err := parseKeys(cmds[1].(*goredis.Cmd).Val())
	if err != nil {
		return nil, false, err
	}
	for len(keys) > 0 {
		if *budget <= 0 {
			return changes, true, nil
		}
		*budget -= len(keys)
		cmds, errs := p.pipeline(ctx, p.write, len(keys), func(pipe goredis.Pipeliner, i int) goredis.Cmder {
			return reapScript.EvalSha(ctx, pipe, p.names(keys[i]).scriptKeys(d), d, presenceReapMembers)
		})
		args := []any{presenceReapBatch}
		for i, cmd := range cmds {
			if errs[i] != nil {
				err = errs[i]
				continue
			}
			finished, gone, perr := parseReap(cmd.(*goredis.Cmd).Val())
			if perr != nil {
				err = perr
				continue
			}
			for _, m := range gone {
				changes = append(changes, backplane.PresenceChange{Key: keys[i], Member: m, Present: false})
			}
			if finished {
				args = append(args, keys[i])
			}
		}
		if err != nil {
			return changes, false, err
		}
		v, rerr := reapNextScript.Run(ctx, p.write, []string{set}, args...).Result()
		if rerr != nil {
			return changes, false, rerr
		}
		if keys, err = parseKeys(v); err != nil {
			return changes, false, err
		}
	}
	// The key set is gone: so is the instance.
	_, errs = p.pipeline(ctx, p.write, 2, func(pipe goredis.Pipeliner, i int) goredis.Cmder {
		if i == 0 {
			return forgetScript.EvalSha(ctx, pipe, []string{p.leaseKey()}, d, cutoff)
		}
		return unlockScript.EvalSha(ctx, pipe, []string{lock}, p.id)
	})
	return changes, false, errors.Join(errs...)
}

// parseKeys parses the reply of reapNextScript.
func parseKeys(v any) ([]string, error) {
	list, ok := v.([]any)
	if !ok || len(list) > presenceReapBatch {
		return nil, fmt.Errorf("%w: reap presence: unexpected reply %T", backplane.ErrUnavailable, v)
	}
	keys := make([]string, 0, len(list))
	for _, k := range list {
		if s, ok := k.(string); ok && s != "" {
			keys = append(keys, s)
		}
	}
	return keys, nil
}

// parseReap parses the reply of reapScript.
func parseReap(v any) (finished bool, gone []string, err error) {
	parts, _ := v.([]any)
	if len(parts) != 2 {
		return false, nil, fmt.Errorf("%w: reap presence: unexpected reply %T", backplane.ErrUnavailable, v)
	}
	f, ok1 := parts[0].(int64)
	list, ok2 := parts[1].([]any)
	if !ok1 || !ok2 || len(list) > presenceReapMembers {
		return false, nil, fmt.Errorf("%w: reap presence: malformed reply", backplane.ErrUnavailable)
	}
	for _, m := range list {
		if s, ok := m.(string); ok {
			gone = append(gone, s)
		}
	}
	return f == 1, gone, nil
}

// update implements UpdatePresence.
func (p *presence) update(ctx context.Context, inst string, updates []backplane.PresenceUpdate) ([]backplane.PresenceChange, error) {
	if inst == "" {
		return nil, errNoInstance
	}
	for _, u := range updates {
		switch {
		case u.Key == "":
			return nil, backplane.ErrInvalidChannel
		case u.Member == "":
			return nil, errNoMember
		case u.Sessions < 0:
			return nil, fmt.Errorf("redis backplane: negative presence sessions %d for %q in %q", u.Sessions, u.Member, u.Key)
		}
	}
	ctx, done, err := p.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	if len(updates) == 0 {
		return nil, nil
	}
	p.mu.Lock()
	l := p.leases[inst]
	var deadline int64
	if l != nil && time.Now().Before(l.local) {
		deadline = l.server
	}
	p.mu.Unlock()
	if deadline == 0 {
		return nil, fmt.Errorf("%w: presence instance %q was not refreshed within the time to live", backplane.ErrUnavailable, inst)
	}
	var changes []backplane.PresenceChange
	var refused []backplane.PresenceUpdate
	for start := 0; start < len(updates); start += presenceChunk {
		chunk := updates[start:min(len(updates), start+presenceChunk)]
		ch, over, err := p.updateChunk(ctx, inst, l, deadline, chunk)
		changes = append(changes, ch...)
		refused = append(refused, over...)
		if err != nil {
			return changes, err
		}
	}
	if len(refused) > 0 {
		u := refused[0]
		return changes, fmt.Errorf("%w: %d of %d updates refused (the first: %q in %q, limit %d)",
			backplane.ErrOverLimit, len(refused), len(updates), u.Member, u.Key, u.Limit)
	}
	return changes, nil
}

// updateChunk sends up to presenceChunk updates of inst, whose lease ends
// at deadline, and returns what changed and the updates that their limit
// refused.
func (p *presence) updateChunk(ctx context.Context, inst string, l *presenceLease, deadline int64, chunk []backplane.PresenceUpdate) ([]backplane.PresenceChange, []backplane.PresenceUpdate, error) {
	if p.sharded {
		if err := p.addKeys(ctx, inst, l, chunk); err != nil {
			return nil, nil, err
		}
	}
	cmds, errs := p.pipeline(ctx, p.write, len(chunk), func(pipe goredis.Pipeliner, i int) goredis.Cmder {
		u := chunk[i]
		keys := p.names(u.Key).scriptKeys(inst)
		args := []any{inst, u.Member, u.Sessions, max(u.Limit, 0), deadline}
		if !p.sharded {
			keys = append(keys, p.keySet(inst))
			args = append(args, u.Key)
		}
		return updateScript.EvalSha(ctx, pipe, keys, args...)
	})
	var (
		changes  []backplane.PresenceChange
		refused  []backplane.PresenceUpdate
		firstErr error
		expired  bool
		empty    map[string]bool // with a cluster: whether inst has no entry left, by key
	)
	if p.sharded {
		empty = make(map[string]bool)
	}
	for i, cmd := range cmds {
		u := chunk[i]
		if errs[i] != nil {
			if firstErr == nil {
				firstErr = errs[i]
			}
			continue
		}
		code, err := cmd.(*goredis.Cmd).Int64()
		switch {
		case err != nil || code < updateOverLimit || code > updateEmpty|updateAbsent:
			if firstErr == nil {
				firstErr = p.malformed("update presence", cmd.(*goredis.Cmd).Val())
			}
		case code == updateExpired:
			expired = true
		case code == updateOverLimit:
			refused = append(refused, u)
		default:
			switch code &^ updateEmpty {
			case updatePresent:
				changes = append(changes, backplane.PresenceChange{Key: u.Key, Member: u.Member, Present: true})
			case updateAbsent:
				changes = append(changes, backplane.PresenceChange{Key: u.Key, Member: u.Member, Present: false})
			}
			if empty != nil {
				empty[u.Key] = code&updateEmpty != 0
			}
		}
	}
	if len(empty) > 0 {
		p.dropKeys(ctx, inst, l, empty)
	}
	switch {
	case expired:
		p.mu.Lock()
		l.local = time.Time{} // refused until refreshed
		p.mu.Unlock()
		return changes, refused, fmt.Errorf("%w: the lease of presence instance %q ended before Redis got its update", backplane.ErrUnavailable, inst)
	case firstErr != nil:
		return changes, refused, p.fail("update presence", firstErr)
	}
	return changes, refused, nil
}

// addKeys puts, with a cluster, the keys where chunk gives inst an entry
// into its key set before the updates are sent, unless known to be there.
func (p *presence) addKeys(ctx context.Context, inst string, l *presenceLease, chunk []backplane.PresenceUpdate) error {
	var add []any
	p.mu.Lock()
	for _, u := range chunk {
		if u.Sessions == 0 {
			continue
		}
		if _, ok := l.keys[u.Key]; ok {
			continue
		}
		if add == nil {
			add = append(add, "") // the set's marker: see refresh
		}
		l.keys[u.Key] = struct{}{} // dedups; undone on failure
		add = append(add, u.Key)
	}
	p.mu.Unlock()
	if add == nil {
		return nil
	}
	if err := p.write.SAdd(ctx, p.keySet(inst), add...).Err(); err != nil {
		p.mu.Lock()
		for _, k := range add[1:] {
			delete(l.keys, k.(string))
		}
		p.mu.Unlock()
		return p.fail("update presence", err)
	}
	return nil
}

// dropKeys removes, with a cluster, the keys where inst has no entry left
// from its key set. They leave the local record first: a key that stays in
// the set when the command fails costs the reaper a look, no more.
func (p *presence) dropKeys(ctx context.Context, inst string, l *presenceLease, empty map[string]bool) {
	var rem []any
	p.mu.Lock()
	for k, e := range empty {
		if e {
			delete(l.keys, k)
			rem = append(rem, k)
		}
	}
	p.mu.Unlock()
	if rem == nil {
		return
	}
	if err := p.write.SRem(ctx, p.keySet(inst), rem...).Err(); err != nil && ctx.Err() == nil {
		p.log.Debug("redis backplane: presence key set not trimmed", "instance", inst, "err", err)
	}
}

// count implements PresenceCount.
func (p *presence) count(ctx context.Context, key string) (int, error) {
	if key == "" {
		return 0, backplane.ErrInvalidChannel
	}
	ctx, done, err := p.begin(ctx)
	if err != nil {
		return 0, err
	}
	defer done()
	n, err := p.read.HLen(ctx, p.names(key).total).Result()
	if err != nil {
		return 0, p.fail("presence count", err)
	}
	return int(n), nil
}

// member implements PresenceMember.
func (p *presence) member(ctx context.Context, key, member string) (int, []string, error) {
	if key == "" {
		return 0, nil, backplane.ErrInvalidChannel
	}
	ctx, done, err := p.begin(ctx)
	if err != nil {
		return 0, nil, err
	}
	defer done()
	n := p.names(key)
	v, err := memberScript.Run(ctx, p.read, []string{n.total, n.index}, member, presenceMaxInstances).Result()
	if err != nil {
		return 0, nil, p.fail("presence member", err)
	}
	parts, _ := v.([]any)
	if len(parts) == 0 || len(parts) > presenceMaxInstances+1 {
		return 0, nil, p.malformed("presence member", v)
	}
	sessions, ok := parts[0].(int64)
	if !ok || sessions < 0 {
		return 0, nil, p.malformed("presence member", parts[0])
	}
	if sessions == 0 {
		return 0, nil, nil
	}
	insts := make([]string, 0, len(parts)-1)
	for _, x := range parts[1:] {
		if s, ok := x.(string); ok {
			insts = append(insts, s)
		}
	}
	return int(sessions), insts, nil
}

// members implements PresenceMembers.
func (p *presence) members(ctx context.Context, key, cursor string, limit int) ([]backplane.PresenceEntry, string, error) {
	if key == "" {
		return nil, "", backplane.ErrInvalidChannel
	}
	ctx, done, err := p.begin(ctx)
	if err != nil {
		return nil, "", err
	}
	defer done()
	switch {
	case limit < 1:
		limit = 100
	case limit > presenceMaxPage:
		limit = presenceMaxPage
	}
	from := "-"
	if cursor != "" {
		// After cursor is from the first string that follows it in byte
		// order. Unlike "(" + cursor, this is never "(+" or "(-", which
		// miniredis takes for the ends of the index.
		from = "[" + cursor + "\x00"
	}
	n := p.names(key)
	v, err := membersScript.Run(ctx, p.read, []string{n.total, n.members}, from, limit+1).Result()
	if err != nil {
		return nil, "", p.fail("presence members", err)
	}
	parts, _ := v.([]any)
	if len(parts) != 2 {
		return nil, "", p.malformed("presence members", v)
	}
	ms, ok1 := parts[0].([]any)
	ss, ok2 := parts[1].([]any)
	if !ok1 || !ok2 || len(ms) != len(ss) || len(ms) > limit+1 {
		return nil, "", p.malformed("presence members", v)
	}
	var next string
	if len(ms) > limit {
		ms = ms[:limit]
		next, _ = ms[limit-1].(string)
	}
	entries := make([]backplane.PresenceEntry, 0, len(ms))
	for i, m := range ms {
		member, _ := m.(string)
		s, _ := ss[i].(string)
		n, err := strconv.Atoi(s)
		if member == "" || err != nil || n <= 0 {
			continue // removed meanwhile, or not ours
		}
		entries = append(entries, backplane.PresenceEntry{Member: member, Sessions: n})
	}
	return entries, next, nil
}
