package wshubtest_test

import (
	"context"
	"net/http"
	"net/url"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/wshub/wshub"
	"github.com/wshub/wshub/backplane"
	"github.com/wshub/wshub/wshubtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var bg = context.Background()

// hello greets each session with its node and user.
func hello(_ context.Context, s *wshub.Session) error {
	return s.Send(wshub.Text(s.Hub().NodeID() + " " + s.UserID()))
}

func TestDialAuthenticatesByQueryParameter(t *testing.T) {
	c := wshubtest.NewCluster(t, 2, &wshub.Options{OnConnect: hello})
	assert.Equal(t, "node1 alice", c.Dial(t, 1, "alice").NextText())
	assert.Equal(t, "node0 ", c.Dial(t, 0, "").NextText(), "anonymous")
}

func TestDialQueryKeepsTheApplicationsAuthenticate(t *testing.T) {
	c := wshubtest.NewCluster(t, 1, &wshub.Options{
		OnConnect: hello,
		Authenticate: func(r *http.Request) (string, error) {
			q := r.URL.Query()
			return q.Get("tenant") + "/" + q.Get(wshubtest.UserParam), nil
		},
	})
	cl := c.DialQuery(t, 0, "bob", url.Values{"tenant": {"acme"}})
	assert.Equal(t, "node0 acme/bob", cl.NextText())
}

func TestClientSendCloseAndClosed(t *testing.T) {
	gone := make(chan string, 1)
	c := wshubtest.NewCluster(t, 2, &wshub.Options{
		OnMessage: func(ctx context.Context, s *wshub.Session, m wshub.Message) {
			_ = s.Send(wshub.Text("echo " + string(m.Data)))
		},
		OnDisconnect: func(s *wshub.Session, _ error) { gone <- s.UserID() },
	})
	alice := c.Dial(t, 0, "alice")
	alice.Send(wshub.Text("hi"))
	assert.Equal(t, "echo hi", alice.NextText())
	alice.Close()
	assert.Equal(t, "alice", <-gone)

	bob := c.Dial(t, 1, "bob")
	require.NoError(t, c.Hub(0).Send(bg, "bob", wshub.Binary([]byte{1})))
	require.NoError(t, c.Hub(0).Disconnect(bg, "bob", 4000, "bye"))
	assert.Equal(t, wshub.StatusCode(4000), bob.Closed())
	assert.Equal(t, wshub.Binary([]byte{1}), bob.Next(), "what came before the close is still read")
	assert.Equal(t, "bob", <-gone)
}

func TestBusInjectsFaults(t *testing.T) {
	c := wshubtest.NewCluster(t, 2, nil)
	alice := c.Dial(t, 1, "alice")
	require.NoError(t, c.Bus().Partition(c.Hub(1).NodeID()))
	require.ErrorIs(t, c.Hub(1).Health(), backplane.ErrUnavailable)
	require.NoError(t, c.Bus().Heal(c.Hub(1).NodeID()))
	require.NoError(t, c.Hub(0).Send(bg, "alice", wshub.Text("back")))
	assert.Equal(t, "back", alice.NextText())
}
