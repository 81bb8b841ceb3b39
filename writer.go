package wshub

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"

	"github.com/coder/websocket"
)

// writeLoop drains the queue in batches and ends when it is empty, so an
// idle session holds no writer goroutine.
func (s *Session) writeLoop() {
	defer s.wg.Done()
	// Let the producer that started this writer (a fan-out to thousands
	// of sessions, say) run on first, so that the first batch carries more
	// than the one message that woke the writer.
	runtime.Gosched()
	var batch []outMsg
	for {
		s.mu.Lock()
		if s.q.empty() {
			s.writing = false
			s.q.recycle(batch)
			s.idle.Broadcast()
			s.mu.Unlock()
			return
		}
		batch = s.takeMetered(batch)
		s.mu.Unlock()

		err := s.writeMetered(batch)
		if err != nil {
			if !s.stalled(err) {
				s.hub.log.Debug("wshub: write failed, closing session", "session", s.id, "err", err)
			}
			_ = s.conn.CloseNow()
			s.mu.Lock()
			s.closing = true
			s.q.reset()
			s.writing = false
			s.idle.Broadcast()
			s.mu.Unlock()
			return
		}
	}
}

// slowLocked records that s is closed as too slow, for reason, which wraps
// ErrSlowClient; stall says a write made no progress. It counts the
// session once, whichever paths find it slow.
func (s *Session) slowLocked(reason error, stall bool) {
	if s.slowErr != nil {
		return
	}
	s.slowErr = reason
	s.hub.stats.slowClosed.Add(1)
	if stall {
		s.hub.stats.writeTimeouts.Add(1)
	}
	s.hub.log.Debug("wshub: closing slow session", "session", s.id, "reason", reason)
}

// stalled reports whether err is from a write that made no progress for
// WriteTimeout (the socket's write deadline passed), and if so records the
// session as too slow.
func (s *Session) stalled(err error) bool {
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	s.mu.Lock()
	s.slowLocked(fmt.Errorf("%w: no write progress for %v: %w", ErrSlowClient, s.hub.opts.WriteTimeout, err), true)
	s.mu.Unlock()
	return true
}

// writeBatch writes batch with the socket corked: one system call per
// writeChunk at the end (and whenever corkLimit bytes are buffered), each
// bounded by WriteTimeout; a batch of one message is written uncorked. Every
// message is a data frame the hub encodes itself (see wire.go), written
// below the websocket library; the socket's write deadline bounds them.
func (s *Session) writeBatch(batch []outMsg) error {
	if s.framing.packed {
		return s.writePacked(batch)
	}
	c := s.cork
	if len(batch) == 1 {
		// One message: one system call, nothing to cork.
		err := c.arm(s.hub.opts.WriteTimeout)
		if err == nil {
			err = c.send(&batch[0])
		}
		batch[0] = outMsg{}
		return err
	}
	n := 0
	for i := range batch {
		n += maxFrameHeader + batch[i].size()
	}
	err := c.cork(s.hub.opts.WriteTimeout, n)
	for i := range batch {
		if err == nil {
			err = c.send(&batch[i])
		}
		batch[i] = outMsg{}
	}
	if uerr := c.uncork(); err == nil {
		err = uerr
	}
	return err
}

var batchBufs = sync.Pool{New: func() any {
	b := make([]byte, 0, maxFrameHeader+batchLimit)
	return &b
}}

// writePacked writes batch in the batched framing, bounded by WriteTimeout:
// its records go into binary frames of up to batchLimit bytes, each built
// behind room for its header.
func (s *Session) writePacked(batch []outMsg) error {
	err := s.cork.arm(s.hub.opts.WriteTimeout)
	bp := batchBufs.Get().(*[]byte)
	buf := (*bp)[:maxFrameHeader]
	for i := range batch {
		m := &batch[i]
		if m.typ == frameMsg || m.typ == restMsg {
			// Already a frame of its own (or the rest of one): it goes
			// as it is, after what was packed before it.
			if err == nil {
				err = s.sendPacked(buf)
			}
			buf = buf[:maxFrameHeader]
			if err == nil {
				err = s.cork.send(m)
			}
			*m = outMsg{}
			continue
		}
		if len(buf) > maxFrameHeader && len(buf)-maxFrameHeader+recordHead+len(m.data) > batchLimit {
			if err == nil {
				err = s.sendPacked(buf)
			}
			buf = buf[:maxFrameHeader]
		}
		buf = binary.BigEndian.AppendUint32(buf, uint32(len(m.data)))
		buf = append(buf, byte(m.typ))
		buf = append(buf, m.data...)
		*m = outMsg{}
	}
	if err == nil {
		err = s.sendPacked(buf)
	}
	if cap(buf) <= 2*batchLimit {
		*bp = buf[:0]
		batchBufs.Put(bp)
	}
	return err
}

// sendPacked writes the records in buf after its first maxFrameHeader
// bytes, if any, as one binary frame whose header it puts in front of
// them.
func (s *Session) sendPacked(buf []byte) error {
	n := len(buf) - maxFrameHeader
	if n <= 0 {
		return nil
	}
	at := maxFrameHeader - frameHeaderLen(n)
	appendFrameHeader(buf[at:at], websocket.MessageBinary, n)
	m := outMsg{typ: frameMsg, data: buf[at:]}
	return s.cork.send(&m)
}
