package main

import "encoding/binary"

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
