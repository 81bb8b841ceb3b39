package redis

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/wshub/wshub/backplane"
)

// Request states: a request is taken by a pipeline or given up by its
// caller, whichever comes first.
const (
	reqQueued int32 = iota
	reqTaken
	reqCanceled
)

// pubReq is one message waiting for a pipeline.
type pubReq struct {
	channel string // Redis channel
	key     string // the channel's log, for a message that goes to one
	ekey    string // the channel's epoch key, with key
	payload []byte
	state   atomic.Int32
	done    chan error // buffered: the pipeline never waits for the caller
}

var reqPool = sync.Pool{New: func() any { return &pubReq{done: make(chan error, 1)} }}

// logScript sends the messages that go to a log (those with a key): the
// Streams publish script.
type logScript interface {
	// appendCmd queues on pipe the command that appends r's payload to its
	// log and publishes its wake-up.
	appendCmd(ctx context.Context, pipe goredis.Pipeliner, r *pubReq) goredis.Cmder
	// loadScript loads the script into Redis again, after Redis answered
	// NOSCRIPT.
	loadScript(ctx context.Context) error
}

// publisherConfig is what a publisher needs from its backplane.
type publisherConfig struct {
	ctx       context.Context         // ends when the backplane closes
	client    goredis.UniversalClient // sends the pipelines
	sharded   bool                    // SPUBLISH instead of PUBLISH
	pipelines int                     // Options.Pipelines
	maxBatch  int                     // Options.MaxBatch
	linger    time.Duration           // Options.Linger; 0 never waits
	// logs sends the messages that go to a log; nil when none do.
	logs logScript
	// done is told the outcome of every message sent.
	done func(err error)
	// sent, when not nil, is told the size of every pipeline as it goes out.
	sent func(n int)
	// lingered, when not nil, is told the end of every linger: whether a
	// second request joined. lingering, when not nil, is called as one
	// begins to wait.
	lingered  func(joined bool)
	lingering func()
}

// publisher batches concurrent Publish calls into pipelines, each one round
// trip for up to Options.MaxBatch messages. A message that finds no
// pipeline in flight goes out alone at once. One that finds a pipeline in
// flight joins the next, which forms while that one is in flight, starts as
// soon as it is answered, and takes everything queued meanwhile. A second
// round trip started beside the first would be answered little sooner, as
// Redis runs commands one at a time; waiting for one saves Redis and the
// node a read and a write per message. Only when at least overlapAt
// requests are queued does a pipeline start beside those in flight, up to
// Options.Pipelines at once.
//
// With a linger, a pipeline that would go out alone (none in flight,
// nothing else queued) waits up to the linger for one more publish to
// share its round trip, but only while publishes have been coming less
// than half a linger apart, so that one is likely to come soon. Publishes
// further apart go out at once, as without it. After a linger that no
// publish joined (a caller that publishes one message at a time, each after
// the last was answered, looks busy but never brings company), the next 2,
// 4, 8 ... up to 1024 pipelines that would linger go out at once instead,
// and a linger that was joined starts that count again.
type publisher struct {
	cfg       publisherConfig
	queue     chan *pubReq
	stop      chan struct{}
	wg        sync.WaitGroup
	overlapAt int // queued requests for which a pipeline starts beside others: 4, or MaxBatch/4 when less

	next    chan struct{} // held by the one pipeline forming, capacity 1
	carried atomic.Int64  // the requests the last pipeline took
	crowded chan struct{} // a token when the queue reached overlapAt, capacity 1
	// Held with next: when the last pipeline took its first request (zero
	// before the first), lingers in a row that nothing joined, and the
	// pipelines that would linger left to go out at once.
	formed       time.Time
	misses, skip int

	mu       sync.Mutex
	inflight int           // pipelines sent and not yet answered
	waiting  int           // 1 while the forming pipeline waits for one in flight
	answered chan struct{} // closed when a pipeline in flight ends, if waiting > 0
}

func newPublisher(cfg publisherConfig) *publisher {
	p := &publisher{
		cfg:       cfg,
		queue:     make(chan *pubReq, cfg.maxBatch*cfg.pipelines),
		stop:      make(chan struct{}),
		overlapAt: max(min(cfg.maxBatch/4, 4), 1),
		answered:  make(chan struct{}),
		next:      make(chan struct{}, 1),
		crowded:   make(chan struct{}, 1),
	}
	p.wg.Add(cfg.pipelines)
	for i := 0; i < cfg.pipelines; i++ {
		go p.run()
	}
	return p
}

// publishPlain publishes payload on channel with a plain (S)PUBLISH.
func (p *publisher) publishPlain(ctx context.Context, channel string, payload []byte) error {
	return p.publish(ctx, channel, "", "", payload)
}

// publish queues one message and waits for Redis to take it. key and ekey
// are the channel's log and epoch key for a message that goes to a log
// (sent by the logScript), empty for a plain (S)PUBLISH.
func (p *publisher) publish(ctx context.Context, channel, key, ekey string, payload []byte) error {
	if err := ctx.Err(); err != nil {
		return err // select would pick at random between queueing and giving up
	}
	r := reqPool.Get().(*pubReq)
	r.channel, r.key, r.ekey, r.payload = channel, key, ekey, payload
	r.state.Store(reqQueued)
	select {
	case p.queue <- r:
		if p.crowdedQueue() {
			select {
			case p.crowded <- struct{}{}:
			default:
			}
		}
	case <-ctx.Done():
		p.recycle(r)
		return ctx.Err()
	case <-p.stop:
		p.recycle(r)
		return backplane.ErrClosed
	}
	select {
	case err := <-r.done:
		p.recycle(r)
		return err
	case <-ctx.Done():
		if r.state.CompareAndSwap(reqQueued, reqCanceled) {
			// No pipeline took it: it will never be sent.
			return ctx.Err()
		}
		return fmt.Errorf("%w (the message may have been published)", ctx.Err())
	case <-p.stop:
		if r.state.CompareAndSwap(reqQueued, reqCanceled) {
			return backplane.ErrClosed
		}
		err := <-r.done // a pipeline has it and answers soon
		p.recycle(r)
		return err
	}
}

func (p *publisher) recycle(r *pubReq) {
	r.channel, r.key, r.ekey, r.payload = "", "", "", nil
	reqPool.Put(r)
}

func (p *publisher) run() {
	defer p.wg.Done()
	batch := make([]*pubReq, 0, p.cfg.maxBatch)
	pb := &pipeBuf{cmds: make([]goredis.Cmder, 0, p.cfg.maxBatch)}
	var lingerT *time.Timer
	if p.cfg.linger > 0 {
		lingerT = time.NewTimer(time.Hour)
		lingerT.Stop()
		defer lingerT.Stop()
	}
	for {
		// One pipeline at a time forms: it holds next from taking its
		// first request until it starts, so that under light load the
		// requests that come while one is in flight wait in the queue for
		// a single pipeline rather than each in a pipeline of its own.
		select {
		case p.next <- struct{}{}:
		case <-p.stop:
			p.drain()
			return
		}
		var first *pubReq
		select {
		case first = <-p.queue:
		case <-p.stop:
			<-p.next
			p.drain()
			return
		}
		batch = append(batch[:0], first)
		started := p.cfg.linger <= 0 || p.linger(&batch, lingerT)
		started = started && p.startPipeline()
		<-p.next
		if !started {
			for _, r := range batch {
				p.fail(r, backplane.ErrClosed)
			}
			clear(batch)
			p.drain()
			return
		}
	fill:
		for len(batch) < cap(batch) {
			select {
			case r := <-p.queue:
				batch = append(batch, r)
			default:
				break fill
			}
		}
		p.carried.Store(int64(len(batch)))
		p.send(batch, pb)
		clear(batch)
	}
}

// startPipeline waits until the pipeline being formed may start: at once when
// none is in flight or when the queue holds at least overlapAt requests,
// and otherwise until one in flight is answered or the queue fills up to
// that. It reports false when the backplane closes first.
func (p *publisher) startPipeline() bool {
	p.mu.Lock()
	for p.inflight > 0 && !p.crowdedQueue() {
		p.waiting++
		answered := p.answered
		p.mu.Unlock()
		var answeredNow bool
		select {
		case <-answered:
			answeredNow = true
		case <-p.crowded:
		case <-p.stop:
			p.mu.Lock()
			p.waiting--
			p.mu.Unlock()
			return false
		}
		p.mu.Lock()
		p.waiting--
		if answeredNow {
			break
		}
	}
	p.inflight++
	p.mu.Unlock()
	return true
}

// linger waits up to the linger for a second request to join batch (its
// first), when none is in flight and nothing else is queued, while requests
// have been coming less than half a linger apart (roughly: the time since
// the last pipeline took its first request, over the requests a recent
// pipeline took), unless a miss holds it off. t is the caller's timer,
// stopped, and stopped (or fired and drained) again on return. It reports false when the
// backplane closes first.
func (p *publisher) linger(batch *[]*pubReq, t *time.Timer) bool {
	now := time.Now()
	gap := now.Sub(p.formed) // long before the first pipeline
	p.formed = now
	if gap >= p.cfg.linger/2*time.Duration(max(p.carried.Load(), 1)) || len(p.queue) > 0 || len(*batch) == cap(*batch) {
		return true
	}
	p.mu.Lock()
	busy := p.inflight > 0 // the pipeline waits for that one anyway
	p.mu.Unlock()
	if busy {
		return true
	}
	if p.skip > 0 {
		p.skip-- // counts only the pipelines that would linger
		return true
	}
	if p.cfg.lingering != nil {
		p.cfg.lingering()
	}
	t.Reset(p.cfg.linger)
	joined := false
	select {
	case r := <-p.queue:
		*batch = append(*batch, r)
		joined = true
		stopTimer(t)
	case <-t.C:
	case <-p.stop:
		stopTimer(t)
		return false
	}
	if joined {
		p.misses = 0
	} else {
		p.misses = min(p.misses+1, maxLingerMisses)
		p.skip = 1 << p.misses
	}
	if p.cfg.lingered != nil {
		p.cfg.lingered(joined)
	}
	return true
}

// stopTimer stops t, which has not fired into a receive, and drains a tick
// it left (only possible with GODEBUG=asynctimerchan=1).
func stopTimer(t *time.Timer) {
	if !t.Stop() {
		select {
		case <-t.C:
		default:
		}
	}
}

// maxLingerMisses bounds the pipelines a publisher forms without trying to
// linger after lingers that nothing joined: 1 << 10.
const maxLingerMisses = 10

// crowdedQueue reports whether enough is queued, counting the request the
// forming pipeline holds, to start a pipeline beside those in flight.
func (p *publisher) crowdedQueue() bool {
	return len(p.queue)+1 >= p.overlapAt
}

// endPipeline marks a pipeline answered and starts those waiting for it.
func (p *publisher) endPipeline() {
	p.mu.Lock()
	p.inflight--
	if p.waiting > 0 {
		close(p.answered)
		p.answered = make(chan struct{})
	}
	p.mu.Unlock()
}

// fail answers r with err unless its caller gave up on it.
func (p *publisher) fail(r *pubReq, err error) {
	if r.state.CompareAndSwap(reqQueued, reqTaken) {
		r.done <- err
	}
}

// send publishes the requests that their callers still wait for in one
// pipeline and hands each caller its result. The pipeline counts as
// answered (endPipeline) once Redis answered all of it, before the callers
// are told.
func (p *publisher) send(batch []*pubReq, pb *pipeBuf) {
	live := batch[:0]
	for _, r := range batch {
		if r.state.CompareAndSwap(reqQueued, reqTaken) {
			live = append(live, r)
		}
	}
	if len(live) == 0 {
		p.endPipeline()
		return
	}
	cmds, execErr := p.exec(pb, live)
	var errs []error // set only when something failed
	if execErr != nil {
		errs = make([]error, len(live))
		var retry []int
		for i := range live {
			errs[i] = cmdErr(cmds[i], execErr)
			if live[i].key != "" && errs[i] != nil && goredis.HasErrorPrefix(errs[i], "NOSCRIPT") {
				retry = append(retry, i)
			}
		}
		// Redis restarted or flushed its scripts: load ours and send again
		// exactly the commands that found it missing. The others ran.
		if len(retry) > 0 && p.cfg.logs.loadScript(p.cfg.ctx) == nil {
			again := make([]*pubReq, len(retry))
			for j, i := range retry {
				again[j] = live[i]
			}
			cmds2, execErr2 := p.exec(pb, again)
			for j, i := range retry {
				errs[i] = cmdErr(cmds2[j], execErr2)
			}
		}
	}
	// Answered, the retry included (a pipeline started before it would
	// overtake it): one publishing again at once finds none in flight.
	p.endPipeline()
	defer pb.release()
	for i, r := range live {
		var err error
		if errs != nil {
			err = errs[i]
		}
		p.cfg.done(err)
		if err != nil {
			if p.cfg.ctx.Err() != nil {
				err = backplane.ErrClosed
			} else {
				err = fmt.Errorf("%w: %w", backplane.ErrUnavailable, err)
			}
		}
		r.done <- err
	}
}

// cmdErr is the error of one command of a pipeline whose Exec returned
// execErr. go-redis leaves the commands of a pipeline that could not be sent
// at all (a failed dial) without an error of their own; a Redis error reply
// is the command's own, and the others ran.
func cmdErr(cmd goredis.Cmder, execErr error) error {
	if err := cmd.Err(); err != nil {
		return err
	}
	var rerr goredis.Error
	if execErr != nil && !errors.As(execErr, &rerr) {
		return execErr
	}
	return nil
}

// pipeBuf is what one pipeline goroutine reuses from batch to batch: the
// go-redis pipeline and its (S)PUBLISH commands, so that a plain publish
// allocates no command of its own.
type pipeBuf struct {
	pipe goredis.Pipeliner
	pubs []*goredis.IntCmd // (S)PUBLISH commands; used ones are pubs[:used]
	used int
	cmds []goredis.Cmder // the commands of the current batch, in order
}

// publishCmd returns a reusable (S)PUBLISH command for channel and payload.
func (pb *pipeBuf) publishCmd(ctx context.Context, sharded bool, channel string, payload []byte) *goredis.IntCmd {
	if pb.used == len(pb.pubs) {
		name := "publish"
		if sharded {
			name = "spublish"
		}
		pb.pubs = append(pb.pubs, goredis.NewIntCmd(ctx, name, "", nil))
	}
	cmd := pb.pubs[pb.used]
	pb.used++
	args := cmd.Args() // the command's own slice: name, channel, payload
	args[1], args[2] = channel, payload
	cmd.SetErr(nil)
	cmd.SetVal(0)
	return cmd
}

// release drops the batch's references to channels and payloads.
func (pb *pipeBuf) release() {
	for _, cmd := range pb.pubs[:pb.used] {
		args := cmd.Args()
		args[1], args[2] = nil, nil
	}
	pb.used = 0
	clear(pb.cmds)
	pb.cmds = pb.cmds[:0]
}

// exec sends one pipeline for live and returns its commands, in order.
func (p *publisher) exec(pb *pipeBuf, live []*pubReq) ([]goredis.Cmder, error) {
	pb.release()
	ctx := p.cfg.ctx
	if pb.pipe == nil {
		pb.pipe = p.cfg.client.Pipeline()
	}
	pipe := pb.pipe
	cmds := pb.cmds
	for _, r := range live {
		switch {
		case r.key != "":
			cmds = append(cmds, p.cfg.logs.appendCmd(ctx, pipe, r))
		default:
			cmd := pb.publishCmd(ctx, p.cfg.sharded, r.channel, r.payload)
			_ = pipe.Process(ctx, cmd)
			cmds = append(cmds, cmd)
		}
	}
	pb.cmds = cmds
	if p.cfg.sent != nil {
		p.cfg.sent(len(cmds))
	}
	_, err := pipe.Exec(ctx)
	return cmds, err
}

// drain fails whatever is still queued once the backplane closes.
func (p *publisher) drain() {
	for {
		select {
		case r := <-p.queue:
			p.fail(r, backplane.ErrClosed)
		default:
			return
		}
	}
}

// close stops the pipelines and waits for them.
func (p *publisher) close() {
	close(p.stop)
	p.wg.Wait()
	p.drain()
}
