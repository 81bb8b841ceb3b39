package wshub

import (
	"errors"
	"unicode/utf8"

	"github.com/coder/websocket"
)

// Errors returned by the hub and its sessions. Calls wrap them with %w, so test
// for them with errors.Is. Errors from the backplane stay reachable the same
// way (for example backplane.ErrUnavailable).
var (
	// ErrClosed is returned by calls made after Hub.Close began.
	ErrClosed = errors.New("wshub: hub closed")
	// ErrSessionClosed is returned by Session.Send and Session.Join after
	// the session began to close.
	ErrSessionClosed = errors.New("wshub: session closed")
	// ErrInvalidUserID is returned for an empty user ID or one longer than
	// MaxNameLength bytes.
	ErrInvalidUserID = errors.New("wshub: invalid user id")
	// ErrInvalidTopic is returned for an empty topic or one longer than
	// MaxNameLength bytes.
	ErrInvalidTopic = errors.New("wshub: invalid topic")
	// ErrInvalidSessionID is returned for a string that cannot be a session
	// ID: one without a node part ("<node>.<id>") or over-long.
	ErrInvalidSessionID = errors.New("wshub: invalid session id")
	// ErrInvalidMessage is returned for a Message with no valid Type (such as
	// the zero Message) or a text message that is not valid UTF-8.
	ErrInvalidMessage = errors.New("wshub: invalid message")
	// ErrMessageTooLarge is returned for a message larger than
	// Options.MaxMessageSize.
	ErrMessageTooLarge = errors.New("wshub: message too large")
	// ErrInvalidCloseStatus is returned for a close status code a server may
	// not send, or a reason longer than 123 bytes or not valid UTF-8.
	ErrInvalidCloseStatus = errors.New("wshub: invalid close status")
	// ErrInvalidOptions is returned by New for a bad configuration.
	ErrInvalidOptions = errors.New("wshub: invalid options")
	// ErrHookPanic is the error Options.OnDisconnect receives for a session
	// ended because OnConnect or OnMessage panicked.
	ErrHookPanic = errors.New("wshub: hook panicked")
	// ErrSlowClient is wrapped in the error Options.OnDisconnect receives
	// for a session closed as too slow: its send queue was full under
	// SlowClose (CloseStatus then gives the close handshake's status,
	// normally 1013), or a write to it made no progress for WriteTimeout.
	// Both are counted in Stats.SlowClosed.
	ErrSlowClient = errors.New("wshub: slow client")
	// ErrLimit is wrapped in the error of a call refused by Options.Limits
	// (Session.Join past Limits.TopicsPerSession, say).
	ErrLimit = errors.New("wshub: limit reached")
	// ErrRateLimit is wrapped in the error Options.OnDisconnect receives
	// for a session closed, under RateClose, for sending faster than
	// Limits.FramesPerSecond or Limits.BytesPerSecond allow (status 1008,
	// counted in Stats.RateClosed); CloseStatus gives the close
	// handshake's status.
	ErrRateLimit = errors.New("wshub: rate limit exceeded")
	// ErrInvalidText is wrapped in the error Options.OnDisconnect receives
	// for a session closed with status 1007 because its client sent a
	// text message that is not valid UTF-8 (counted in
	// Stats.InvalidText); OnMessage never sees that message.
	ErrInvalidText = errors.New("wshub: invalid UTF-8 in a text message")
	// ErrNoPresence is returned by Hub.Online, Hub.TopicCount,
	// Hub.TopicMembers and acknowledged joins when the backplane keeps no
	// presence record (it does not implement backplane.Presence).
	ErrNoPresence = errors.New("wshub: the backplane keeps no presence")
	// ErrNotAcknowledged is wrapped in the error of a Join or Leave with
	// Acknowledged that not every node holding the user acknowledged (see
	// AckError).
	ErrNotAcknowledged = errors.New("wshub: not acknowledged")
)

// StatusCode is a WebSocket close status code (RFC 6455, section 7.4).
type StatusCode int

// Close status codes a server commonly sends. Applications may also use their
// own codes in the range 4000 to 4999.
const (
	StatusNormalClosure   StatusCode = 1000
	StatusGoingAway       StatusCode = 1001
	StatusPolicyViolation StatusCode = 1008
	StatusMessageTooBig   StatusCode = 1009
	StatusInternalError   StatusCode = 1011
	StatusServiceRestart  StatusCode = 1012 // Hub.Drain: reconnect now, to another node
	StatusTryAgainLater   StatusCode = 1013
)

// StatusInvalidFramePayloadData (1007) is the status a session is closed
// with when its client sends a text message that is not valid UTF-8 (RFC
// 6455, section 8.1).
const StatusInvalidFramePayloadData StatusCode = 1007

// validStatus reports whether a server may send code with reason.
func validStatus(code StatusCode, reason string) bool {
	if len(reason) > 123 || !utf8.ValidString(reason) {
		return false
	}
	switch {
	case code == 1000 || code == 1001 || code == 1002 || code == 1003:
		return true
	case code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}

// CloseStatus returns the close status code carried by err, as found in the
// error passed to Options.OnDisconnect, or -1 when err is not a close.
func CloseStatus(err error) StatusCode {
	return StatusCode(websocket.CloseStatus(err))
}
