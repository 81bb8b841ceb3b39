package main

import (
	"encoding/binary"
	"math"
	"math/bits"
	"sync/atomic"
)

// The parent and the client process speak newline-delimited JSON over the
// child's stdin (requests) and stdout (one reply per request). The child's
// stderr is the parent's, for diagnostics.

// Operations of the client process.
const (
	opConnect    = "connect"     // dial N stable clients, each with a reader
	opDrain      = "drain"       // wait for the expected deliveries, report counts and latencies
	opChurnStart = "churn-start" // start connecting and disconnecting churners
	opChurnStop  = "churn-stop"  // stop them, wait until every churner is gone
	opClose      = "close"       // close every connection and exit
)

// childEnv is set in the environment of the client process. A test binary,
// whose os.Args[0] the parent re-executes, dispatches on it in TestMain.
const childEnv = "WSHUB_BENCH_CHILD"

// request is one command to the client process.
type request struct {
	Op string `json:"op"`

	// connect, churn-start
	URLs     []string `json:"urls,omitempty"`      // one per node; client i uses URLs[i%len]
	N        int      `json:"n,omitempty"`         // clients (connect) or churn slots (churn-start): about N churners alive at once
	Prefix   string   `json:"prefix,omitempty"`    // user IDs are Prefix+index
	PerAddr  int      `json:"per_addr,omitempty"`  // clients per loopback source address
	AddrBase int      `json:"addr_base,omitempty"` // first source address is 127.0.0.(1+AddrBase)
	DialConc int      `json:"dial_conc,omitempty"` // dials in flight
	Epoch    int64    `json:"epoch,omitempty"`     // unix nanos the payload stamps count from
	BufSize  int      `json:"buf_size,omitempty"`  // read buffer per connection
	Batch    bool     `json:"batch,omitempty"`     // ask for the batched framing, count records

	// churn-start
	Rate   float64 `json:"rate,omitempty"`    // connects per second
	LifeNS int64   `json:"life_ns,omitempty"` // mean life of a churner

	// drain
	Expect     int64 `json:"expect,omitempty"`      // stable deliveries to wait for
	QuietNS    int64 `json:"quiet_ns,omitempty"`    // give up after this long without progress
	DeadlineNS int64 `json:"deadline_ns,omitempty"` // and at this unix time
}

// reply answers one request.
type reply struct {
	Err   string `json:"err,omitempty"`
	CPUNS int64  `json:"cpu_ns,omitempty"` // CPU the client process has used so far

	// connect
	Connected int   `json:"connected,omitempty"`
	DialNS    int64 `json:"dial_ns,omitempty"`

	// drain
	Delivered      int64 `json:"delivered,omitempty"`       // messages received by stable clients
	ChurnDelivered int64 `json:"churn_delivered,omitempty"` // messages received by churners
	P50NS          int64 `json:"p50_ns,omitempty"`
	P99NS          int64 `json:"p99_ns,omitempty"`
	MaxNS          int64 `json:"max_ns,omitempty"`
	LastNS         int64 `json:"last_ns,omitempty"` // latest arrival, nanos since Epoch
	Bad            int64 `json:"bad,omitempty"`     // messages (records) without a valid stamp
	Frames         int64 `json:"frames,omitempty"`  // WebSocket messages received by stable clients
	ServerClosed   int   `json:"server_closed,omitempty"`
	WaitedNS       int64 `json:"waited_ns,omitempty"`

	// churn-stop
	Connects    int64  `json:"connects,omitempty"`
	Disconnects int64  `json:"disconnects,omitempty"`
	Errors      int64  `json:"errors,omitempty"`
	Skipped     int64  `json:"skipped,omitempty"`
	FirstError  string `json:"first_error,omitempty"`
}

// stampLen is the length of the send time at the start of every payload.
//
// A text message must be valid UTF-8, so the stamp is not 8 raw bytes of
// unix nanos (61 bits) but the nanoseconds since the run's epoch, which the
// parent hands the client process, in 8 printable characters of 6 bits each
// ('0'+v, so '0' to 'o'): 48 bits, 78 hours.
const stampLen = 8

// padByte fills a payload after its stamp.
const padByte = 'x'

// putStamp writes ns, nanoseconds since the epoch, into b[:stampLen].
func putStamp(b []byte, ns int64) {
	v := uint64(ns)
	for i := stampLen - 1; i >= 0; i-- {
		b[i] = '0' + byte(v&63)
		v >>= 6
	}
}

// getStamp reads what putStamp wrote.
func getStamp(b []byte) (int64, bool) {
	if len(b) < stampLen {
		return 0, false
	}
	var v uint64
	for i := 0; i < stampLen; i++ {
		c := b[i] - '0'
		if c >= 64 {
			return 0, false
		}
		v = v<<6 | uint64(c)
	}
	return int64(v), true
}

// The latency histogram is log-linear: values below 128 ns have a bucket each,
// above that every power of two is split in 64 buckets, so a quantile is off
// by at most 1/64 (1.6%). It holds up to 2^40 ns (18 minutes), more is
// clamped. Readers add to one of histShards copies, picked by connection, so
// that thousands of readers do not fight over the same cache lines.
const (
	subBits    = 6
	subCount   = 1 << subBits
	histMaxLog = 40
	histLen    = (histMaxLog-subBits)*subCount + 2*subCount
	histShards = 16
)

type histogram struct {
	shards [histShards][histLen]atomic.Uint64
}

func bucketOf(v int64) int {
	if v < 0 {
		v = 0
	}
	u := uint64(v)
	s := bits.Len64(u) - (subBits + 1)
	if s < 0 {
		s = 0
	}
	i := s*subCount + int(u>>uint(s))
	if i >= histLen {
		i = histLen - 1
	}
	return i
}

// bucketValue returns the middle of bucket i's range.
func bucketValue(i int) int64 {
	if i < 2*subCount {
		return int64(i)
	}
	s := i/subCount - 1
	top := uint64(i - s*subCount)
	return int64(top<<uint(s) + (uint64(1)<<uint(s))/2)
}

func (h *histogram) record(shard int, v int64) {
	h.shards[shard%histShards][bucketOf(v)].Add(1)
}

// quantiles returns the values at each of qs (0..1), in order, and the count.
func (h *histogram) quantiles(qs ...float64) ([]int64, uint64) {
	var merged [histLen]uint64
	var total uint64
	for s := range h.shards {
		for i := range merged {
			n := h.shards[s][i].Load()
			merged[i] += n
			total += n
		}
	}
	out := make([]int64, len(qs))
	if total == 0 {
		return out, 0
	}
	for k, q := range qs {
		rank := uint64(math.Ceil(q * float64(total)))
		if rank < 1 {
			rank = 1
		}
		var cum uint64
		for i, n := range merged {
			cum += n
			if cum >= rank {
				out[k] = bucketValue(i)
				break
			}
		}
	}
	return out, total
}

// recordHead is the head of a record of the batched framing (wshub_batch):
// a 4-byte big-endian length n and a 1-byte type (1 text, 2 binary), then
// the n bytes of the message.
const recordHead = 5

// nextRecord returns the record of the batched framing that starts at
// msg[off:], and the offset of the next one. ok is false when msg[off:] is
// too short for the record's head or body: the message is malformed from
// there on. It allocates nothing.
func nextRecord(msg []byte, off int) (typ byte, body []byte, next int, ok bool) {
	if len(msg)-off < recordHead {
		return 0, nil, len(msg), false
	}
	n := uint64(binary.BigEndian.Uint32(msg[off:]))
	typ = msg[off+4]
	off += recordHead
	if n > uint64(len(msg)-off) {
		return typ, nil, len(msg), false
	}
	end := off + int(n)
	return typ, msg[off:end:end], end, true
}
