package wshub

import (
	"fmt"
	"unicode/utf8"

	"github.com/wshub/wshub/internal/envelope"
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

// TextBytes returns a text message holding b, which must be UTF-8. The hub
// keeps b: do not modify it after sending.
func TextBytes(b []byte) Message { return Message{Type: MessageText, Data: b} }

// Binary returns a binary message holding b. The hub keeps b: do not modify it
// after sending.
func Binary(b []byte) Message { return Message{Type: MessageBinary, Data: b} }

// check validates m for sending: a known type, valid UTF-8 text, and at
// most maxSize bytes.
func (m Message) check(maxSize int) error {
	switch m.Type {
	case MessageText:
		if !utf8.Valid(m.Data) {
			return fmt.Errorf("%w: text is not valid UTF-8", ErrInvalidMessage)
		}
	case MessageBinary:
	default:
		return fmt.Errorf("%w: type %d", ErrInvalidMessage, int(m.Type))
	}
	if len(m.Data) > maxSize {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrMessageTooLarge, len(m.Data), maxSize)
	}
	return nil
}

func flags(m Message) byte {
	if m.Type == MessageBinary {
		return envelope.FlagBinary
	}
	return 0
}
