package redis

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// subConn is one subscription connection: the commands a subscriber sends
// on it and the replies it reads.
type subConn interface {
	// send writes one command: (S)SUBSCRIBE, (S)UNSUBSCRIBE or PING.
	send(ctx context.Context, name string, args []string) error
	// receive blocks for the next reply. Its channel is valid until the
	// next call; its payload belongs to the caller.
	receive() (push, error)
	// close ends the connection; a blocked receive returns.
	close() error
}

// dialSubConn opens a subscription connection for client, to the master
// that owns first's slot with a cluster. With a *goredis.Client or a
// *goredis.ClusterClient it is a connection of the backplane's own, read by
// respReader: a message costs one allocation, its payload, where go-redis's
// PubSub allocates about seven times. Other clients, and
// credentials that stream (which only go-redis can renew), use go-redis's
// PubSub.
func dialSubConn(ctx context.Context, client goredis.UniversalClient, sharded bool, first string) (subConn, error) {
	var opt *goredis.Options
	switch c := client.(type) {
	case *goredis.Client:
		opt = c.Options()
	case *goredis.ClusterClient:
		node, err := c.MasterForKey(ctx, first)
		if err != nil {
			return nil, err
		}
		opt = node.Options()
	}
	if opt == nil || opt.StreamingCredentialsProvider != nil || opt.Dialer == nil {
		// Subscribed to first from the start: some clients (a Ring) pick
		// the connection by it, and refuse a PubSub without a channel.
		var ps *goredis.PubSub
		if sharded {
			ps = client.SSubscribe(ctx, first)
		} else {
			ps = client.Subscribe(ctx, first)
		}
		return &goredisSubConn{ps: ps, sharded: sharded}, nil
	}
	return dialRespConn(ctx, opt)
}

// respConn is a subscription connection of the backplane's own, in RESP2.
type respConn struct {
	conn         net.Conn
	rr           *respReader
	writeTimeout time.Duration // no deadline when not positive

	mu  sync.Mutex // serializes writes
	buf []byte
}

func dialRespConn(ctx context.Context, opt *goredis.Options) (*respConn, error) {
	dctx := ctx
	if opt.DialTimeout > 0 {
		var cancel context.CancelFunc
		dctx, cancel = context.WithTimeout(ctx, opt.DialTimeout)
		defer cancel()
	}
	conn, err := opt.Dialer(dctx, opt.Network, opt.Addr)
	if err != nil {
		return nil, err
	}
	c := &respConn{conn: conn, rr: newRespReader(conn), writeTimeout: opt.WriteTimeout}
	// The backplane closing ends a handshake that hangs.
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	err = c.handshake(dctx, opt)
	if !stop() {
		_ = conn.Close()
		return nil, ctx.Err()
	}
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	return c, nil
}

// handshakeTimeout bounds the handshake when the client sets no dial
// timeout.
const handshakeTimeout = 10 * time.Second

// handshake authenticates and names the connection, as go-redis would.
func (c *respConn) handshake(ctx context.Context, opt *goredis.Options) error {
	d, ok := ctx.Deadline()
	if !ok {
		d = time.Now().Add(handshakeTimeout)
	}
	_ = c.conn.SetDeadline(d)
	defer c.conn.SetDeadline(time.Time{})
	user, pass := opt.Username, opt.Password
	switch {
	case opt.CredentialsProviderContext != nil:
		var err error
		if user, pass, err = opt.CredentialsProviderContext(ctx); err != nil {
			return err
		}
	case opt.CredentialsProvider != nil:
		user, pass = opt.CredentialsProvider()
	}
	var cmds [][]string
	switch {
	case pass != "" && user != "":
		cmds = append(cmds, []string{"AUTH", user, pass})
	case pass != "":
		cmds = append(cmds, []string{"AUTH", pass})
	}
	if opt.ClientName != "" {
		cmds = append(cmds, []string{"CLIENT", "SETNAME", opt.ClientName})
	}
	for _, cmd := range cmds {
		if _, err := c.conn.Write(appendCommand(nil, cmd[0], cmd[1:]...)); err != nil {
			return err
		}
		if _, err := c.rr.readStatus(); err != nil {
			// Named by the command alone: AUTH's arguments are secrets.
			return fmt.Errorf("redis backplane: %s on the subscription connection: %w", strings.ToLower(cmd[0]), err)
		}
	}
	return nil
}

func (c *respConn) send(ctx context.Context, name string, args []string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf = appendCommand(c.buf[:0], name, args...)
	deadline := time.Time{}
	if c.writeTimeout > 0 {
		deadline = time.Now().Add(c.writeTimeout)
	}
	if d, ok := ctx.Deadline(); ok && (deadline.IsZero() || d.Before(deadline)) {
		deadline = d
	}
	_ = c.conn.SetWriteDeadline(deadline)
	_, err := c.conn.Write(c.buf)
	if cap(c.buf) > 64<<10 {
		c.buf = nil // do not keep a large SUBSCRIBE's buffer
	}
	return err
}

func (c *respConn) receive() (push, error) { return c.rr.readPush() }

func (c *respConn) close() error { return c.conn.Close() }

// goredisSubConn is a subscription connection through go-redis's PubSub.
type goredisSubConn struct {
	ps      *goredis.PubSub
	sharded bool
}

func (c *goredisSubConn) send(ctx context.Context, name string, args []string) error {
	switch name {
	case "SUBSCRIBE":
		return c.ps.Subscribe(ctx, args...)
	case "SSUBSCRIBE":
		return c.ps.SSubscribe(ctx, args...)
	case "UNSUBSCRIBE":
		return c.ps.Unsubscribe(ctx, args...)
	case "SUNSUBSCRIBE":
		return c.ps.SUnsubscribe(ctx, args...)
	case "PING":
		return c.ps.Ping(ctx, args...)
	}
	return fmt.Errorf("redis backplane: no such subscription command %q", name)
}

func (c *goredisSubConn) receive() (push, error) {
	for {
		m, err := c.ps.Receive(context.Background())
		if err != nil {
			return push{}, err
		}
		switch m := m.(type) {
		case *goredis.Message:
			return push{kind: pushMessage, channel: []byte(m.Channel), payload: []byte(m.Payload)}, nil
		case *goredis.Subscription:
			kind, ok := kindOf([]byte(m.Kind))
			if !ok || kind == pushMessage || kind == pushPong {
				continue
			}
			return push{kind: kind, channel: []byte(m.Channel)}, nil
		case *goredis.Pong:
			return push{kind: pushPong, payload: []byte(m.Payload)}, nil
		}
	}
}

func (c *goredisSubConn) close() error { return c.ps.Close() }

// isMoved reports whether err is a MOVED or ASK redirection from a cluster,
// as read by respReader or by go-redis.
func isMoved(err error) bool {
	var msg string
	var re respError
	var ge goredis.Error
	switch {
	case errors.As(err, &re):
		msg = string(re)
	case errors.As(err, &ge):
		msg = ge.Error()
	default:
		return false
	}
	return strings.HasPrefix(msg, "MOVED ") || strings.HasPrefix(msg, "ASK ")
}
