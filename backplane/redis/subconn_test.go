package redis_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub/backplane"
	wsredis "github.com/wshub/wshub/backplane/redis"
	"github.com/wshub/wshub/internal/redistest"
)

// roundTrip subscribes a PubSub on client to a channel, publishes on it and
// checks the message arrives.
func roundTrip(t *testing.T, client goredis.UniversalClient) {
	t.Helper()
	bp, got := startPubSub(t, client)
	roundTripOn(t, bp, got, "room")
}

// startPubSub starts a PubSub on client, closed when the test ends, whose
// handler hands the first message it is given, until taken, to got.
func startPubSub(t *testing.T, client goredis.UniversalClient) (bp *wsredis.PubSub, got <-chan backplane.Message) {
	t.Helper()
	bp, err := wsredis.NewPubSub(client, &wsredis.Options{Logger: quiet})
	require.NoError(t, err)
	t.Cleanup(func() { _ = bp.Close() })
	ch := make(chan backplane.Message, 1)
	require.NoError(t, bp.Start(func(m backplane.Message) {
		select {
		case ch <- m:
		default:
		}
	}))
	return bp, ch
}

// roundTripOn subscribes a started PubSub, whose handler feeds got, to
// channel, publishes on it and checks the message arrives.
func roundTripOn(t *testing.T, bp *wsredis.PubSub, got <-chan backplane.Message, channel string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(bg, 10*time.Second)
	defer cancel()
	require.NoError(t, bp.Subscribe(ctx, channel))
	require.NoError(t, bp.Publish(ctx, channel, []byte("hello")))
	select {
	case m := <-got:
		assert.Equal(t, channel, m.Channel)
		assert.Equal(t, "hello", string(m.Payload))
	case <-ctx.Done():
		t.Fatal("the message did not arrive")
	}
}

// TestSubscriptionConnectionAuthenticates checks that the subscription
// connection, which the backplane opens itself, signs in as the client
// does: a password, an ACL user, a credentials provider; and that a wrong
// password is an error that says so, not a silent subscription.
func TestSubscriptionConnectionAuthenticates(t *testing.T) {
	srv := redistest.Start(t)
	require.NoError(t, srv.Client(t).ConfigSet(bg, "requirepass", "s3cret").Err())
	admin := goredis.NewClient(&goredis.Options{Addr: srv.Addr(), Password: "s3cret"})
	defer admin.Close()
	require.NoError(t, admin.Do(bg, "ACL", "SETUSER", "app", "on", ">app-pw", "~*", "&*", "+@all").Err())

	t.Run("password", func(t *testing.T) {
		roundTrip(t, admin)
	})
	t.Run("acl user", func(t *testing.T) {
		c := goredis.NewClient(&goredis.Options{Addr: srv.Addr(), Username: "app", Password: "app-pw", ClientName: "wshub-test"})
		defer c.Close()
		roundTrip(t, c)
	})
	t.Run("credentials provider", func(t *testing.T) {
		c := goredis.NewClient(&goredis.Options{Addr: srv.Addr(), CredentialsProvider: func() (string, string) { return "app", "app-pw" }})
		defer c.Close()
		roundTrip(t, c)
	})
	t.Run("wrong password", func(t *testing.T) {
		const wrong = "not-the-password-7f3a"
		c := goredis.NewClient(&goredis.Options{Addr: srv.Addr(), Password: wrong})
		defer c.Close()
		bp, err := wsredis.NewPubSub(c, &wsredis.Options{Logger: quiet})
		require.NoError(t, err)
		defer bp.Close()
		require.NoError(t, bp.Start(func(backplane.Message) {}))
		ctx, cancel := context.WithTimeout(bg, 2*time.Second)
		defer cancel()
		err = bp.Subscribe(ctx, "room")
		require.Error(t, err)
		assert.NotContains(t, err.Error(), wrong, "an error never carries the password")
		require.Eventually(t, func() bool {
			err := bp.Health()
			return err != nil && (strings.Contains(err.Error(), "WRONGPASS") || strings.Contains(err.Error(), "invalid password"))
		}, 10*time.Second, 10*time.Millisecond, "Health says why: %v", bp.Health())
		assert.NotContains(t, bp.Health().Error(), wrong, "an error never carries the password")
	})
}

// TestSubscriptionThroughARing checks the path for clients the backplane
// does not open connections for itself: go-redis's own PubSub.
func TestSubscriptionThroughARing(t *testing.T) {
	srv := redistest.Start(t)
	ring := goredis.NewRing(&goredis.RingOptions{Addrs: map[string]string{"one": srv.Addr()}})
	defer ring.Close()
	roundTrip(t, ring)
}

// TestChannelLengthIsBounded checks that a channel name longer than the
// subscription reader accepts is refused up front, with the error callers
// branch on, instead of breaking the subscription connection.
func TestChannelLengthIsBounded(t *testing.T) {
	srv := redistest.Start(t)
	bp, got := startPubSub(t, srv.Client(t))
	long := strings.Repeat("x", wsredis.MaxChannelLength+1)
	require.ErrorIs(t, bp.Subscribe(bg, "ok", long), backplane.ErrInvalidChannel)
	require.ErrorIs(t, bp.Publish(bg, long, []byte("p")), backplane.ErrInvalidChannel)
	// The longest one is carried.
	roundTripOn(t, bp, got, strings.Repeat("y", wsredis.MaxChannelLength))
}

// TestAnAbandonedSubscribeKeepsTheConnection checks that a Subscribe whose
// context ends before Redis confirms it takes back its channels without
// breaking the connection the shard's other channels share.
func TestAnAbandonedSubscribeKeepsTheConnection(t *testing.T) {
	srv := redistest.Start(t)
	admin := srv.Client(t)
	bp, got := startPubSub(t, srv.Client(t))
	roundTripOn(t, bp, got, "room")

	// Redis holds every command for a while: the next Subscribe's
	// confirmation cannot come before its context ends.
	require.NoError(t, admin.Do(bg, "CLIENT", "PAUSE", "300", "ALL").Err())
	ctx, cancel := context.WithTimeout(bg, 50*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, bp.Subscribe(ctx, "late"), context.DeadlineExceeded)

	roundTripOn(t, bp, got, "room")
	assert.Zero(t, bp.Stats().Resubscribes, "the shard's connection was rebuilt")
}

// TestSubscriptionConnectionUsesTLS checks that the subscription
// connection is dialled as the client dials: over TLS to a redis-server
// that only speaks TLS on that port.
func TestSubscriptionConnectionUsesTLS(t *testing.T) {
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	keyDER, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600))

	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	tlsAddr := l.Addr().String()
	require.NoError(t, l.Close())
	_, port, _ := net.SplitHostPort(tlsAddr)
	redistest.Start(t, redistest.WithArgs("--tls-port", port, "--tls-cert-file", certFile,
		"--tls-key-file", keyFile, "--tls-ca-cert-file", certFile, "--tls-auth-clients", "no"))

	roots := x509.NewCertPool()
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	roots.AddCert(cert)
	c := goredis.NewClient(&goredis.Options{Addr: tlsAddr, TLSConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}})
	defer c.Close()
	roundTrip(t, c)
}
