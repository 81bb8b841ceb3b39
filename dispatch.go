package wshub

import (
	"errors"
	"fmt"

	"github.com/coder/websocket"

	"github.com/wshub/wshub/backplane"
	"github.com/wshub/wshub/internal/envelope"
)

// receive is the backplane handler: it decodes an envelope and hands it to
// the local sessions it names. It never blocks on a socket. What arrives on
// a user's channel while a Join of that user waits for its topic's
// subscription is held back in order (see joinGates).
func (h *Hub) receive(m backplane.Message) {
	if h.gates.holding(m.Channel) {
		// Only what verifies may take room behind a Join: forged
		// messages must not be able to end the wait early.
		if h.signer != nil {
			if _, err := h.decode(m.Channel, m.Payload); err != nil {
				h.dropUndecodable(m.Channel, err)
				return
			}
		}
		if h.gates.hold(m) {
			return
		}
	}
	if f := h.handle(m); f != nil {
		h.gates.open(m.Channel, f)
	}
}

// dropUndecodable counts and drops a backplane message that failed
// verification (forged) or did not decode or exceeds the hub's limits
// (malformed).
func (h *Hub) dropUndecodable(channel string, err error) {
	if errors.Is(err, envelope.ErrForged) {
		h.dropForged(channel, err)
		return
	}
	h.stats.malformed.Add(1)
	h.log.Debug("wshub: dropped malformed backplane message", "channel", channel, "err", err)
}

// handle applies one message from the backplane, once its signature is
// verified when the hub has SigningKeys (once per message, whatever the
// number of recipients). For a Join that a local session took part in, it
// returns the flush that confirms the topic's subscription, which later
// messages on channel must wait for.
func (h *Hub) handle(m backplane.Message) *flush {
	channel, off := m.Channel, m.Offset
	e, err := h.decode(channel, m.Payload)
	if err == nil && (len(e.Payload) > h.opts.MaxMessageSize || len(e.Target) > 2*MaxNameLength) {
		err = fmt.Errorf("%w: payload of %d bytes or target of %d: over the hub's limits", envelope.ErrMalformed, len(e.Payload), len(e.Target))
	}
	if err != nil {
		h.dropUndecodable(channel, err)
		return nil
	}
	d := delivery{msg: outMsg{typ: websocket.MessageText, data: e.Payload}, channel: channel, off: off}
	if e.Flags&envelope.FlagBinary != 0 {
		d.msg.typ = websocket.MessageBinary
	}
	switch e.Op {
	case envelope.OpUser, envelope.OpTopic, envelope.OpSession:
		// A fan-out that follows the last one closely is a burst: its
		// messages go through the writers, which pack what queues into
		// few writes, rather than one system call per recipient each.
		d.now = mono()
		d.through = d.now-h.fanoutEnd.Load() >= h.throughIdle
		defer func() { h.fanoutEnd.Store(mono()) }()
	}
	switch e.Op {
	case envelope.OpUser:
		h.delivered(&e, h.reg.deliver(h.reg.users, e.Target, &d, ""))
	case envelope.OpTopic:
		h.delivered(&e, h.reg.deliver(h.reg.topics, e.Target, &d, e.Arg))
	case envelope.OpSession:
		s := h.reg.session(e.Target)
		d.off = ""
		if s != nil && s.deliver(&d) {
			h.delivered(&e, 1)
		}
	case envelope.OpJoin, envelope.OpLeave:
		if checkName(e.Arg, ErrInvalidTopic) != nil {
			h.stats.malformed.Add(1)
			return nil
		}
		return h.reg.joinUser(e.Target, e.Arg, e.Op == envelope.OpJoin)
	case envelope.OpJoinAck, envelope.OpLeaveAck, envelope.OpAck:
		if channel != h.inbox {
			h.stats.malformed.Add(1) // only ever sent to a node's inbox
			return nil
		}
		if e.Op == envelope.OpAck {
			h.acked(&e)
		} else {
			h.acknowledge(&e)
		}
	case envelope.OpFlush:
		h.mu.Lock()
		if ch, ok := h.flushes[e.Target]; ok {
			close(ch)
			delete(h.flushes, e.Target)
		}
		h.mu.Unlock()
	case envelope.OpDisconnect:
		code := StatusCode(e.Code)
		if e.Code > 4999 || !validStatus(code, e.Arg) {
			h.stats.malformed.Add(1)
			return nil
		}
		for _, s := range h.reg.userSessions(e.Target) {
			_ = s.Close(code, e.Arg)
		}
	}
	return nil
}

// delivery is one message from the backplane on its way to this node's
// sessions: the message, where it came from and, built once on first need
// and shared by every recipient, its frame and its positions framing (the
// payload with its head, and that payload's frame).
type delivery struct {
	msg          outMsg
	channel, off string
	// shared says the message has several recipients, for whom it is
	// framed once; one recipient's is framed as it is written. now is
	// when the fan-out began (mono); through says it may write to idle
	// sockets itself (it is no burst).
	shared  bool
	through bool
	now     int64

	wire       []byte // the frame of msg
	framed     []byte // the payload in the positions framing
	framedWire []byte // framed's frame
}

// prepare builds the frames that recipients share, so that goroutines of
// a parallel fan-out only read d.
func (d *delivery) prepare() {
	if !d.shared {
		return
	}
	if d.wire == nil {
		d.wire, _ = encodeFrame(d.msg.typ, "", false, d.msg.data)
	}
	if d.framedWire == nil {
		var at int
		d.framedWire, at = encodeFrame(d.msg.typ, head(d.off, d.channel), true, d.msg.data)
		d.framed = d.framedWire[at:]
	}
}

// plain returns the message as s gets it without the positions framing.
func (d *delivery) plain(s *Session) outMsg {
	if !d.shared || s.framing.packed {
		return d.msg
	}
	if d.wire == nil {
		d.wire, _ = encodeFrame(d.msg.typ, "", false, d.msg.data)
	}
	return outMsg{typ: frameMsg, data: d.wire}
}

// framedMsg returns the message in the positions framing, as s gets it.
func (d *delivery) framedMsg(s *Session) outMsg {
	if d.shared && !s.framing.packed {
		if d.framedWire == nil {
			var at int
			d.framedWire, at = encodeFrame(d.msg.typ, head(d.off, d.channel), true, d.msg.data)
			d.framed = d.framedWire[at:]
		}
		return outMsg{typ: frameMsg, data: d.framedWire}
	}
	if d.framed == nil {
		d.framed = frame(head(d.off, d.channel), d.msg.data)
	}
	return outMsg{typ: d.msg.typ, data: d.framed}
}

// deliver queues d to s, in the positions framing if s asked for it, and
// holds it back while s recovers d's channel.
func (s *Session) deliver(d *delivery) bool {
	if !s.framing.positions {
		return s.enqueueAt(d.plain(s), d.through, d.now)
	}
	m, channel, off := d.framedMsg(s), d.channel, d.off
	if off != "" {
		s.mu.Lock()
		if rs := s.rs; rs != nil {
			if pend, ok := rs.pending[channel]; ok {
				o := &s.hub.opts
				if len(pend) >= o.SendQueueLen || rs.held+m.size()+queuedOverhead > o.SendQueueBytes {
					// Held back longer than the queue would hold: give
					// the channel up rather than grow without bound.
					rs.overflow[channel] = true
					for _, p := range pend {
						rs.held -= p.m.size() + queuedOverhead
					}
					rs.pending[channel] = pend[:0]
				}
				if !rs.overflow[channel] {
					rs.pending[channel] = append(rs.pending[channel], pendingMsg{m, off})
					rs.held += m.size() + queuedOverhead
				}
				held := !rs.overflow[channel]
				s.mu.Unlock()
				return held
			}
			if f, ok := rs.floor[channel]; ok && !backplane.OffsetAfter(off, f) {
				s.mu.Unlock()
				return false // recovered already
			}
		}
		s.mu.Unlock()
	}
	return s.enqueueAt(m, d.through, d.now)
}
