package wshub

import (
	"fmt"
	"unicode/utf8"
)

// MessageType is the kind of a WebSocket data message.
type MessageType int

// The message types. The zero MessageType is not valid.
const (
	MessageText   MessageType = 1 // UTF-8 text
	MessageBinary MessageType = 2 // opaque bytes
)

// String returns "text" or "binary".
func (t MessageType) String() string {
	switch t {
	case MessageText:
		return "text"
	case MessageBinary:
		return "binary"
	default:
		return fmt.Sprintf("MessageType(%d)", int(t))
	}
}

// Message is one WebSocket message. Data reaches the client byte for byte, in
// a message of the given Type; no framing is added.
//
// A Message passed to the hub must not be modified afterwards: the hub may
// still be sending it.
type Message struct {
	Type MessageType
	Data []byte
}

// Text returns a text message holding s.
func Text(s string) Message { return Message{Type: MessageText, Data: []byte(s)} }

// Binary returns a binary message holding b. The hub keeps b: do not modify it
// after sending.
func Binary(b []byte) Message { return Message{Type: MessageBinary, Data: b} }

func (h *Hub) checkMessage(m Message) error {
	switch m.Type {
	case MessageText:
		if !utf8.Valid(m.Data) {
			return fmt.Errorf("%w: text is not valid UTF-8", ErrInvalidMessage)
		}
	case MessageBinary:
	default:
		return fmt.Errorf("%w: type %d", ErrInvalidMessage, int(m.Type))
	}
	if len(m.Data) > h.opts.MaxMessageSize {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrMessageTooLarge, len(m.Data), h.opts.MaxMessageSize)
	}
	return nil
}
