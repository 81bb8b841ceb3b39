package wshub

import (
	"context"
	"encoding/binary"
	"sync"

	"github.com/coder/websocket"
)

// BatchParam is the query parameter of the upgrade request that opts a
// connection into batched framing: the hub then sends binary WebSocket
// messages that each carry one or more of the connection's messages, as
// records of a 4-byte big-endian length n, a 1-byte type (1 text, 2 binary)
// and the n bytes of the message. A session's writer packs what is queued
// when it writes, up to 64 KiB per WebSocket message, so a client that falls
// behind catches up with few large messages instead of many small ones. In
// a browser:
//
//	ws.binaryType = "arraybuffer";
//	ws.onmessage = (ev) => {
//	  const v = new DataView(ev.data);
//	  for (let o = 0; o < v.byteLength; ) {
//	    const n = v.getUint32(o), type = v.getUint8(o + 4);
//	    const body = new Uint8Array(ev.data, o + 5, n);
//	    handle(type === 1 ? new TextDecoder().decode(body) : body);
//	    o += 5 + n;
//	  }
//	};
const BatchParam = "wshub_batch"

// batchLimit is the size up to which records are packed into one
// WebSocket message; a larger message travels alone in its own.
const batchLimit = 64 << 10

// recordHead is the size of a record's length and type.
const recordHead = 5

var batchBufs = sync.Pool{New: func() any {
	b := make([]byte, 0, batchLimit)
	return &b
}}

// writePacked writes batch in the batched framing, bounded by WriteTimeout.
func (s *Session) writePacked(batch []outMsg) error {
	ctx := context.Background()
	var err error
	if s.cork != nil {
		err = s.cork.arm(s.hub.opts.WriteTimeout)
	} else {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(s.ctx, s.hub.opts.WriteTimeout)
		defer cancel()
	}
	bp := batchBufs.Get().(*[]byte)
	buf := (*bp)[:0]
	for i := range batch {
		m := &batch[i]
		if len(buf) > 0 && len(buf)+recordHead+len(m.data) > batchLimit {
			if err == nil {
				err = s.conn.Write(ctx, websocket.MessageBinary, buf)
			}
			buf = buf[:0]
		}
		buf = binary.BigEndian.AppendUint32(buf, uint32(len(m.data)))
		buf = append(buf, byte(m.typ))
		buf = append(buf, m.data...)
		*m = outMsg{}
	}
	if err == nil && len(buf) > 0 {
		err = s.conn.Write(ctx, websocket.MessageBinary, buf)
	}
	if cap(buf) <= 2*batchLimit {
		*bp = buf[:0]
		batchBufs.Put(bp)
	}
	return err
}
