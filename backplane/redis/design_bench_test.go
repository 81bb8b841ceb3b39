package redis_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/wshub/wshub/internal/redistest"
)

// BenchmarkStreamDesigns compares, directly with go-redis on a real
// redis-server, two designs of a Redis Streams mode against plain pub/sub:
//
//   - plain: PUBLISH chan payload; node 2 SUBSCRIBEs to the channels it holds.
//   - A (log per channel + pub/sub wake-up): one Lua script per message,
//     XADD key MAXLEN ~ 1000 * d payload, PEXPIRE key 300000, PUBLISH chan
//     id..payload; node 2 SUBSCRIBEs to the channels it holds and needs no
//     extra read.
//   - B (partitioned streams read by every node): XADD part MAXLEN ~ 100000 *
//     c chan d payload into partition hash(chan)%16; node 2 runs XREAD BLOCK 0
//     COUNT 1000 over all 16 partitions, tracking the last ids, and drops the
//     messages of channels it does not hold.
//
// Two nodes, each with its own clients: node 1 publishes from 16 goroutines,
// flat out, to random channels among 10,000; node 2 holds 1,000 of them, so
// about 10% of the messages are useful to it. With load=flat every goroutine
// waits for its own command; with load=flat-pipelined the goroutines queue
// their messages (still waiting for their own result) and 4 pipeline
// goroutines send whatever is queued, up to 256 commands per pipeline, as the
// backplane's publisher does.
//
// With load=paced-10k the 16 goroutines publish 10,000 msgs/s in all, below
// every design's capacity here, for latencies without saturation.
//
// Metrics: msgs/s (publish throughput), p50-us/p99-us (payload timestamp to
// receipt at node 2, messages node 2 holds), n2-reads/useful (messages node 2
// reads per message it holds), n2-B/useful (bytes node 2 reads from Redis
// per useful message), redis-cpu-us/msg (redis-server user+sys CPU from
// /proc/<pid>/stat over publish+delivery), mem-B/entry (INFO used_memory
// growth divided by the stream entries Redis retains; A and B only),
// entries/key, batch (mean pipeline size).
//
// Run: go test -run x -bench BenchmarkStreamDesigns -benchtime 50000x ./backplane/redis/
func BenchmarkStreamDesigns(b *testing.B) {
	loads := []sdLoad{
		{name: "flat"},
		{name: "flat-pipelined", pipelined: true},
		{name: "paced-10k", rate: 10_000},
	}
	for _, d := range []sdDesign{sdPlain, sdLogWakeup, sdPartitioned} {
		for _, l := range loads {
			b.Run(fmt.Sprintf("design=%s/load=%s", d, l.name), func(b *testing.B) {
				benchStreamDesign(b, d, l)
			})
		}
	}
}

// sdLoad is how node 1 publishes: flat out, each goroutine waiting for its
// own command (pipelined=false) or sharing pipelines; or, with rate > 0, at
// rate msgs/s in all, each goroutine unpipelined at rate/sdPublishers.
type sdLoad struct {
	name      string
	pipelined bool
	rate      int
}

type sdDesign int

const (
	sdPlain sdDesign = iota
	sdLogWakeup
	sdPartitioned
)

func (d sdDesign) String() string {
	switch d {
	case sdPlain:
		return "plain"
	case sdLogWakeup:
		return "A"
	default:
		return "B"
	}
}

const (
	sdChannels     = 10_000 // channels in use
	sdHeld         = 1_000  // channels node 2 holds: 0..sdHeld-1
	sdPartitions   = 16
	sdPublishers   = 16
	sdPipelines    = 4
	sdMaxBatch     = 256
	sdPayloadBytes = 64
	sdWaitTimeout  = 90 * time.Second
)

// sdScript is design A's publish: append to the channel's capped log, renew
// its TTL and wake the subscribers up with the id and the payload.
var sdScript = goredis.NewScript(`
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', 1000, '*', 'd', ARGV[1])
redis.call('PEXPIRE', KEYS[1], 300000)
redis.call('PUBLISH', KEYS[2], id .. ' ' .. ARGV[1])
return id
`)

// sdEnv is one run's keys and clients.
type sdEnv struct {
	design   sdDesign
	channels []string // pub/sub channel names, also the channel field of B
	logs     []string // design A: stream key per channel
	parts    []string // design B: partition stream keys
	partOf   []int    // design B: partition of each channel
	pub      *goredis.Client
}

// add issues message i's command on c, a client or a pipeline.
func (e *sdEnv) add(c goredis.Cmdable, i int, payload []byte) goredis.Cmder {
	switch e.design {
	case sdPlain:
		return c.Publish(bg, e.channels[i], payload)
	case sdLogWakeup:
		return sdScript.Run(bg, c, []string{e.logs[i], e.channels[i]}, payload)
	default:
		return c.XAdd(bg, &goredis.XAddArgs{
			Stream: e.parts[e.partOf[i]],
			MaxLen: 100_000,
			Approx: true,
			Values: []any{"c", e.channels[i], "d", payload},
		})
	}
}

// sdReceiver is node 2's view. lat is written by the receiving goroutine
// only and read once it has ended.
type sdReceiver struct {
	useful atomic.Int64 // messages of held channels
	total  atomic.Int64 // messages read
	lat    []int64      // ns, one per useful message
	err    error
	done   chan struct{}
}

func (r *sdReceiver) got(payload string, useful bool) {
	r.total.Add(1)
	if !useful {
		return
	}
	if len(payload) >= 8 {
		sent := int64(binary.LittleEndian.Uint64([]byte(payload[:8])))
		r.lat = append(r.lat, time.Now().UnixNano()-sent)
	}
	r.useful.Add(1)
}

func benchStreamDesign(b *testing.B, d sdDesign, l sdLoad) {
	srv := redistest.Start(b)
	addr := srv.Addr()
	prefix := "sd-" + randomHex() + ":"

	e := &sdEnv{design: d}
	held := make(map[string]struct{}, sdHeld)
	for i := 0; i < sdChannels; i++ {
		ch := prefix + "c:" + strconv.Itoa(i)
		e.channels = append(e.channels, ch)
		e.logs = append(e.logs, prefix+"log:"+strconv.Itoa(i))
		h := fnv.New32a()
		_, _ = h.Write([]byte(ch))
		e.partOf = append(e.partOf, int(h.Sum32()%sdPartitions))
		if i < sdHeld {
			held[ch] = struct{}{}
		}
	}
	for p := 0; p < sdPartitions; p++ {
		e.parts = append(e.parts, prefix+"part:"+strconv.Itoa(p))
	}

	// Clients. admin is the benchmark's own (INFO, XLEN); node 1 publishes
	// with pub; node 2 reads with n2, whose bytes read are counted. Node 2
	// speaks RESP2: go-redis v9.18 can drop RESP3 pub/sub messages.
	admin := goredis.NewClient(&goredis.Options{Addr: addr, Protocol: 2})
	b.Cleanup(func() { _ = admin.Close() })
	e.pub = goredis.NewClient(&goredis.Options{Addr: addr, PoolSize: 32})
	b.Cleanup(func() { _ = e.pub.Close() })
	var n2Bytes atomic.Int64
	n2 := goredis.NewClient(&goredis.Options{Addr: addr, Protocol: 2, Dialer: sdCountingDialer(&n2Bytes)})
	b.Cleanup(func() { _ = n2.Close() })
	if d == sdLogWakeup {
		if err := sdScript.Load(bg, e.pub).Err(); err != nil {
			b.Fatal(err)
		}
	}

	// Node 2.
	r := &sdReceiver{lat: make([]int64, 0, b.N/5+100), done: make(chan struct{})}
	var stopReceiver func()
	switch d {
	case sdPlain, sdLogWakeup:
		ps := n2.Subscribe(bg, e.channels[:sdHeld]...)
		for n := 0; n < sdHeld; {
			m, err := ps.Receive(bg)
			if err != nil {
				b.Fatal(err)
			}
			if s, ok := m.(*goredis.Subscription); ok && s.Kind == "subscribe" {
				n++
			}
		}
		go func() {
			defer close(r.done)
			for {
				m, err := ps.ReceiveMessage(bg)
				if err != nil {
					return // closed
				}
				payload := m.Payload
				if d == sdLogWakeup {
					sp := strings.IndexByte(payload, ' ')
					if sp < 0 {
						r.err = fmt.Errorf("wake-up without id: %q", payload)
						return
					}
					payload = payload[sp+1:]
				}
				r.got(payload, true)
			}
		}()
		stopReceiver = func() { _ = ps.Close() }
	case sdPartitioned:
		partIdx := make(map[string]int, sdPartitions)
		args := make([]string, 2*sdPartitions)
		for p, k := range e.parts {
			partIdx[k] = p
			args[p] = k
			args[sdPartitions+p] = "0-0" // new keys: same as "$" now
		}
		go func() {
			defer close(r.done)
			for {
				streams, err := n2.XRead(bg, &goredis.XReadArgs{Streams: args, Count: 1000, Block: 0}).Result()
				if err != nil {
					if !errors.Is(err, goredis.ErrClosed) {
						r.err = err
					}
					return
				}
				stop := false
				for _, s := range streams {
					for _, m := range s.Messages {
						ch, _ := m.Values["c"].(string)
						if ch == "" {
							stop = true // the benchmark's stop marker
							continue
						}
						payload, _ := m.Values["d"].(string)
						_, ok := held[ch]
						r.got(payload, ok)
					}
					if n := len(s.Messages); n > 0 {
						args[sdPartitions+partIdx[s.Stream]] = s.Messages[n-1].ID
					}
				}
				if stop {
					return
				}
			}
		}()
		stopReceiver = func() {
			_ = e.pub.XAdd(bg, &goredis.XAddArgs{Stream: e.parts[0], Values: []any{"c", "", "d", ""}}).Err()
		}
	}
	var stopOnce sync.Once
	stop := func() {
		stopOnce.Do(stopReceiver)
		select {
		case <-r.done:
		case <-time.After(10 * time.Second):
			_ = n2.Close()
			<-r.done
		}
	}
	b.Cleanup(stop)

	// Baselines.
	pid, err := sdRedisPID(admin)
	if err != nil {
		b.Fatal(err)
	}
	mem0, err := sdUsedMemory(admin)
	if err != nil {
		b.Fatal(err)
	}
	cpu0, err := sdRedisCPU(admin, pid)
	if err != nil {
		b.Fatal(err)
	}
	bytes0 := n2Bytes.Load()

	// Node 1 publishes.
	var expected atomic.Int64 // messages for channels node 2 holds
	var batches atomic.Int64
	b.ResetTimer()
	start := time.Now()
	sdPublish(b, e, l, &expected, &batches)
	pubDur := time.Since(start)

	// Wait until node 2 has read everything it is sent.
	wantTotal := expected.Load()
	if d == sdPartitioned {
		wantTotal = int64(b.N)
	}
	deadline := time.Now().Add(sdWaitTimeout)
	for r.useful.Load() < expected.Load() || r.total.Load() < wantTotal {
		if time.Now().After(deadline) {
			b.Fatalf("node 2 got %d useful of %d, %d read of %d", r.useful.Load(), expected.Load(), r.total.Load(), wantTotal)
		}
		select {
		case <-r.done:
			b.Fatalf("node 2 stopped: %v", r.err)
		case <-time.After(200 * time.Microsecond):
		}
	}
	b.StopTimer()
	cpu1, err := sdRedisCPU(admin, pid)
	if err != nil {
		b.Fatal(err)
	}
	bytesRead := n2Bytes.Load() - bytes0
	stop()
	if r.err != nil {
		b.Fatal(r.err)
	}
	mem1, err := sdUsedMemory(admin)
	if err != nil {
		b.Fatal(err)
	}

	useful := float64(max(r.useful.Load(), 1))
	b.ReportMetric(float64(b.N)/pubDur.Seconds(), "msgs/s")
	slices.Sort(r.lat)
	b.ReportMetric(float64(sdPercentile(r.lat, 0.50))/1e3, "p50-us")
	b.ReportMetric(float64(sdPercentile(r.lat, 0.99))/1e3, "p99-us")
	b.ReportMetric(float64(r.total.Load())/useful, "n2-reads/useful")
	b.ReportMetric(float64(bytesRead)/useful, "n2-B/useful")
	b.ReportMetric((cpu1-cpu0).Seconds()*1e6/float64(b.N), "redis-cpu-us/msg")
	if l.pipelined {
		b.ReportMetric(float64(b.N)/float64(max(batches.Load(), 1)), "batch")
	}
	if d == sdPlain {
		return
	}
	keys := e.parts
	if d == sdLogWakeup {
		keys = e.logs
	}
	pipe := admin.Pipeline()
	lens := make([]*goredis.IntCmd, len(keys))
	for i, k := range keys {
		lens[i] = pipe.XLen(bg, k)
	}
	if _, err := pipe.Exec(bg); err != nil {
		b.Fatal(err)
	}
	var entries, nonEmpty int64
	for _, l := range lens {
		entries += l.Val()
		if l.Val() > 0 {
			nonEmpty++
		}
	}
	if d == sdPartitioned {
		entries-- // the stop marker
	}
	b.ReportMetric(float64(mem1-mem0)/float64(max(entries, 1)), "mem-B/entry")
	b.ReportMetric(float64(entries)/float64(max(nonEmpty, 1)), "entries/key")
}

// sdPublish publishes b.N messages of sdPayloadBytes bytes, each starting with
// its send time, to random channels from sdPublishers goroutines.
func sdPublish(b *testing.B, e *sdEnv, l sdLoad, expected, batches *atomic.Int64) {
	pipelined := l.pipelined
	var interval time.Duration // per goroutine, when paced
	if l.rate > 0 {
		interval = time.Duration(sdPublishers) * time.Second / time.Duration(l.rate)
	}
	start := time.Now()
	type req struct {
		i       int
		payload []byte
		done    chan error
	}
	var queue chan *req
	var pipes sync.WaitGroup
	if pipelined {
		queue = make(chan *req, sdPipelines*sdMaxBatch)
		for p := 0; p < sdPipelines; p++ {
			pipes.Add(1)
			go func() {
				defer pipes.Done()
				batch := make([]*req, 0, sdMaxBatch)
				cmds := make([]goredis.Cmder, 0, sdMaxBatch)
				for first := range queue {
					batch = append(batch[:0], first)
				fill:
					for len(batch) < sdMaxBatch {
						select {
						case r, ok := <-queue:
							if !ok {
								break fill
							}
							batch = append(batch, r)
						default:
							break fill
						}
					}
					pipe := e.pub.Pipeline()
					cmds = cmds[:0]
					for _, r := range batch {
						cmds = append(cmds, e.add(pipe, r.i, r.payload))
					}
					_, execErr := pipe.Exec(bg)
					batches.Add(1)
					for k, r := range batch {
						err := cmds[k].Err()
						if err == nil {
							err = execErr
						}
						r.done <- err
					}
				}
			}()
		}
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < sdPublishers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(w)))
			done := make(chan error, 1)
			buf := make([]byte, sdPayloadBytes)
			for k := range buf {
				buf[k] = 'x'
			}
			// Paced goroutines start staggered and keep to a schedule.
			due := start.Add(time.Duration(w) * interval / sdPublishers)
			for next.Add(1) <= int64(b.N) {
				if interval > 0 {
					time.Sleep(time.Until(due))
					due = due.Add(interval)
				}
				i := rng.IntN(sdChannels)
				if i < sdHeld {
					expected.Add(1)
				}
				binary.LittleEndian.PutUint64(buf, uint64(time.Now().UnixNano()))
				var err error
				if pipelined {
					queue <- &req{i: i, payload: buf, done: done}
					err = <-done
				} else {
					err = e.add(e.pub, i, buf).Err()
				}
				if err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if pipelined {
		close(queue)
		pipes.Wait()
	}
}

func sdPercentile(sorted []int64, q float64) int64 {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(q*float64(len(sorted))))]
}

// sdCountingDialer dials TCP and adds every byte read to n.
func sdCountingDialer(n *atomic.Int64) func(context.Context, string, string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &sdCountingConn{Conn: c, n: n}, nil
	}
}

type sdCountingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *sdCountingConn) Read(p []byte) (int, error) {
	k, err := c.Conn.Read(p)
	c.n.Add(int64(k))
	return k, err
}

func sdInfoField(admin *goredis.Client, section, field string) (string, error) {
	info, err := admin.Info(bg, section).Result()
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			return v, nil
		}
	}
	return "", fmt.Errorf("INFO %s has no %s", section, field)
}

func sdRedisPID(admin *goredis.Client) (int, error) {
	v, err := sdInfoField(admin, "server", "process_id")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(v)
}

func sdUsedMemory(admin *goredis.Client) (int64, error) {
	v, err := sdInfoField(admin, "memory", "used_memory")
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(v, 10, 64)
}

// sdRedisCPU returns the user+system CPU time of redis-server from
// /proc/<pid>/stat (utime and stime, in ticks of 1/100 s), or from INFO cpu
// where /proc is missing.
func sdRedisCPU(admin *goredis.Client, pid int) (time.Duration, error) {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		var total time.Duration
		for _, f := range []string{"used_cpu_user", "used_cpu_sys"} {
			v, err := sdInfoField(admin, "cpu", f)
			if err != nil {
				return 0, err
			}
			s, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return 0, err
			}
			total += time.Duration(s * float64(time.Second))
		}
		return total, nil
	}
	s := string(stat)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat: %q", pid, s)
	}
	var ticks int64
	for _, f := range fields[11:13] { // utime, stime: fields 14 and 15
		t, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, err
		}
		ticks += t
	}
	return time.Duration(ticks) * (time.Second / 100), nil
}
