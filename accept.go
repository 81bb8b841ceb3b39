package wshub

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path"
	"strings"
	"unicode/utf8"

	"github.com/coder/websocket"

	"github.com/wshub/wshub/backplane"
)

// ServeHTTP authenticates the request, upgrades it to a WebSocket and starts
// serving the session on a goroutine of the hub's, which Close waits for. It
// returns once the handshake is done, so that the HTTP server's buffers for
// the request are released while the session lasts: the session's Context,
// not the request's, says when it ends. Before any upgrade it answers 401
// when Options.Authenticate fails, 403 for a refused origin, 400 for resume
// parameters it cannot use (see SinceParam, ClientParam), 429 Too Many
// Requests when the user already has Limits.SessionsPerUser sessions on this
// node, 503 when the node already has Limits.Sessions sessions (both with a
// Retry-After header of Limits.RetryAfter in whole seconds, and counted in
// Stats.Refused), 503 also once the hub drains or is closing (with
// Retry-After: 1; see Drain) or when the backplane cannot confirm the
// user's subscription in time, 500 when Authenticate returns an over-long
// user ID or OnConnect panics, 501 when the ResponseWriter cannot hijack the
// connection, and what the websocket library answers to a request that is
// not a valid handshake (400, 405, 426).
func (h *Hub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	if h.closed || h.drain.on {
		h.mu.Unlock()
		refuseShuttingDown(w)
		return
	}
	h.conns.Add(1)
	h.mu.Unlock()
	served := false
	defer func() {
		if !served {
			h.conns.Done()
		}
	}()

	s, status, err := h.prepare(w, r)
	if s == nil {
		if status != 0 {
			http.Error(w, err.Error(), status)
		}
		return
	}
	cw := &corkingWriter{ResponseWriter: w, guard: s.newReadGuard()}
	conn, err := websocket.Accept(cw, r, &websocket.AcceptOptions{
		OriginPatterns: h.opts.AllowedOrigins,
		OnPingReceived: s.onPing,
	})
	if err != nil {
		h.log.Warn("wshub: upgrade failed", "remote", r.RemoteAddr, "err", err)
		s.abandon()
		if h.opts.OnConnect != nil && h.opts.OnDisconnect != nil {
			s.onDisconnect(err)
		}
		return
	}
	h.stats.accepted.Add(1)
	served = true
	go func() {
		defer h.conns.Done()
		s.serve(conn, cw.conn)
	}()
}

// prepare checks an upgrade request and makes its session, registered and
// set up by OnConnect, up to the handshake. It returns a nil session when
// the request is refused, with the status and error to answer (no status
// when the websocket library has answered).
func (h *Hub) prepare(w http.ResponseWriter, r *http.Request) (*Session, int, error) {
	userID, status, err := h.authenticate(r)
	if err != nil {
		return nil, status, err
	}
	if !isUpgrade(r) {
		// Let the websocket library answer with the right status and headers.
		_, _ = websocket.Accept(w, r, nil)
		return nil, 0, nil
	}
	if err := h.checkOrigin(r); err != nil {
		h.log.Debug("wshub: upgrade refused", "remote", r.RemoteAddr, "err", err)
		return nil, http.StatusForbidden, err
	}
	if !canHijack(w) {
		h.log.Error("wshub: the http.ResponseWriter cannot hijack the connection (HTTP/2, or middleware hiding http.Hijacker)")
		return nil, http.StatusNotImplemented, errors.New(http.StatusText(http.StatusNotImplemented))
	}
	fr, err := parseFraming(r)
	if err != nil {
		h.log.Debug("wshub: upgrade refused", "remote", r.RemoteAddr, "err", err)
		return nil, http.StatusBadRequest, err
	}
	s := h.newSession(r, userID)
	s.framing = fr
	if fr.since != nil {
		s.startResume(fr.since)
	}
	if err := h.register(r.Context(), s); err != nil {
		s.cancel()
		s.stopHubLink()
		if errors.Is(err, ErrLimit) {
			h.stats.refused.Add(1)
			h.log.Debug("wshub: upgrade refused", "remote", r.RemoteAddr, "user", userID, "err", err)
			w.Header().Set("Retry-After", h.opts.Limits.retryAfterSeconds())
			if errors.Is(err, errUserSessions) || errors.Is(err, errClusterSessions) {
				return nil, http.StatusTooManyRequests, err
			}
			return nil, http.StatusServiceUnavailable, err
		}
		h.log.Warn("wshub: cannot register session", "err", err)
		return nil, http.StatusServiceUnavailable, errors.New("wshub: backplane unavailable")
	}
	// OnConnect runs before the handshake completes, so that what it sets
	// up (topics joined, messages queued) is in place once the client sees
	// the connection open.
	if h.opts.OnConnect != nil {
		if ok, err := s.onConnect(); !ok {
			s.abandon()
			if h.opts.OnDisconnect != nil {
				s.onDisconnect(ErrHookPanic)
			}
			return nil, http.StatusInternalServerError, errors.New("internal error")
		} else if err != nil {
			_ = s.Close(StatusPolicyViolation, closeReason(err.Error()))
		}
	}
	// Once the handshake completes, every node counts the session, in the
	// topics OnConnect joined too: its presence writes were tried (in one
	// batch with those of other upgrades). A failed write does not refuse
	// the session; it is retried.
	if h.pres != nil && userID != "" {
		ctx, cancel := context.WithTimeout(r.Context(), h.opts.SubscribeTimeout)
		select {
		case <-h.pres.tried():
		case <-ctx.Done():
		}
		cancel()
	}
	return s, 0, nil
}

// authenticate returns the user ID Options.Authenticate gives r, or the
// status and error to refuse it with.
func (h *Hub) authenticate(r *http.Request) (string, int, error) {
	if h.opts.Authenticate == nil {
		return "", 0, nil
	}
	userID, err := h.opts.Authenticate(r)
	if err != nil {
		h.log.Debug("wshub: authentication failed", "remote", r.RemoteAddr, "err", err)
		return "", http.StatusUnauthorized, errors.New("unauthorized")
	}
	if len(userID) > MaxNameLength {
		h.log.Error("wshub: Authenticate returned an over-long user id", "len", len(userID))
		return "", http.StatusInternalServerError, errors.New("internal error")
	}
	return userID, 0, nil
}

// checkOrigin refuses a cross-origin upgrade unless Options.AllowedOrigins
// allows it, with the rules the websocket library applies during Accept; it
// runs first so that a refused request costs no subscription and no hook.
func (h *Hub) checkOrigin(r *http.Request) error {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return nil // not a browser
	}
	u, err := url.Parse(origin)
	if err != nil {
		return fmt.Errorf("wshub: bad Origin header %q", origin)
	}
	if strings.EqualFold(u.Host, r.Host) {
		return nil
	}
	for _, pattern := range h.opts.AllowedOrigins {
		target := u.Host
		if strings.Contains(pattern, "://") {
			target = u.Scheme + "://" + u.Host
		}
		if ok, _ := path.Match(strings.ToLower(pattern), strings.ToLower(target)); ok {
			return nil
		}
	}
	return fmt.Errorf("wshub: origin %q is not allowed", origin)
}

// closeReason cuts s to the 123 bytes a close frame can carry, on a rune
// boundary.
func closeReason(s string) string {
	for len(s) > 123 || !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}

// isUpgrade reports whether r is a WebSocket handshake the websocket library
// will take (RFC 6455, section 4.2.1); others are left to it to refuse with
// the right status, before any subscription or hook.
func isUpgrade(r *http.Request) bool {
	if r.Method != http.MethodGet || !r.ProtoAtLeast(1, 1) ||
		!headerHasToken(r.Header, "Connection", "upgrade") ||
		!headerHasToken(r.Header, "Upgrade", "websocket") ||
		r.Header.Get("Sec-WebSocket-Version") != "13" {
		return false
	}
	key, err := base64.StdEncoding.DecodeString(r.Header.Get("Sec-WebSocket-Key"))
	return err == nil && len(key) == 16
}

// headerHasToken reports whether a comma-separated header holds token, in
// any case.
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, p := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(p), token) {
				return true
			}
		}
	}
	return false
}

// register adds s to the indexes and waits until the backplane delivers the
// user's channel and this node's inbox, so that a Send made once the client's
// handshake completes reaches it. A session the registry refuses (a limit,
// or a closing hub) leaves nothing behind: no interest, not even the inbox's.
func (h *Hub) register(ctx context.Context, s *Session) error {
	userReady, err := h.reg.add(s)
	if err != nil {
		return err
	}
	if limit := h.opts.Limits.ClusterSessionsPerUser; limit > 0 && s.userID != "" {
		err := h.pres.reserve(ctx, s.userID, limit)
		if errors.Is(err, backplane.ErrOverLimit) {
			h.reg.remove(s)
			h.pres.release(s.userID)
			return errClusterSessions
		}
		h.pres.release(s.userID)
		if err != nil {
			h.log.Debug("wshub: cluster session limit not checked: presence unavailable", "user", s.userID, "err", err)
		}
	}
	h.inboxOnce.Do(func() {
		h.interest.first(h.inbox)
		h.inboxWanted.Store(true)
	})

	ctx, cancel := context.WithTimeout(ctx, h.opts.SubscribeTimeout)
	defer cancel()
	stop := context.AfterFunc(h.ctx, cancel) // a forced Close ends the wait
	defer stop()
	err = userReady.wait(ctx)
	if err == nil {
		err = h.interest.ready(h.inbox).wait(ctx)
	}
	if err != nil {
		h.reg.remove(s)
		return fmt.Errorf("wshub: subscribe: %w", err)
	}
	return nil
}

// corkingWriter wraps the ResponseWriter handed to websocket.Accept so that
// the hijacked connection, which the library writes to, is a corkConn, and,
// with a guard, is read through that readGuard.
type corkingWriter struct {
	http.ResponseWriter
	conn  *corkConn
	guard *readGuard // nil: reads go straight to the socket
}

// Hijack implements http.Hijacker, finding the server's Hijacker through
// middleware that wraps the ResponseWriter and exposes it with Unwrap.
func (w *corkingWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	w.conn = newCorkConn(nc)
	// The library writes only its control frames: a small buffer holds
	// each whole (see libWriteBuffer), and the server's 4 KiB one goes.
	// It reads through a small buffer too, and large payloads straight
	// into their own.
	brw.Writer = bufio.NewWriterSize(w.conn, libWriteBuffer)
	if w.guard == nil {
		// What the server read past the request stays buffered, where
		// the library looks for it.
		pre := bytes.Clone(peekBuffered(brw.Reader))
		brw.Reader = bufio.NewReaderSize(io.MultiReader(bytes.NewReader(pre), nc), max(libReadBuffer, len(pre)))
		_, _ = brw.Reader.Peek(len(pre))
		return w.conn, brw, nil
	}
	// Every byte the client sent, including what the server buffered
	// past the request, goes through the guard.
	w.guard.attach(brw.Reader, nc)
	brw.Reader = bufio.NewReaderSize(w.guard, libReadBuffer)
	return guardedConn{corkConn: w.conn, g: w.guard}, brw, nil
}

// libReadBuffer is the size of the bufio.Reader the websocket library reads
// through, in place of the server's 4 KiB one.
const libReadBuffer = 1 << 10

// peekBuffered returns what br holds buffered.
func peekBuffered(br *bufio.Reader) []byte {
	b, _ := br.Peek(br.Buffered())
	return b
}

// Unwrap returns the wrapped ResponseWriter, for http.ResponseController.
func (w *corkingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// WriteHeaderNow sends a header whose WriteHeader a framework's writer (such
// as gin's) only recorded; the websocket library calls it before hijacking.
func (w *corkingWriter) WriteHeaderNow() {
	if g, ok := w.ResponseWriter.(interface{ WriteHeaderNow() }); ok {
		g.WriteHeaderNow()
	}
}

// canHijack reports whether w, or a writer it wraps and exposes with Unwrap,
// can hand over its connection.
func canHijack(w http.ResponseWriter) bool {
	for {
		switch t := w.(type) {
		case http.Hijacker:
			return true
		case interface{ Unwrap() http.ResponseWriter }:
			w = t.Unwrap()
		default:
			return false
		}
	}
}
