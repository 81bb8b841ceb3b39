package redis

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSplitWakeUp(t *testing.T) {
	e := newEpoch()
	msg := []byte(e + " 1700000000000-3 a payload with spaces")
	epoch, id, payload, ok := splitWakeUp(msg)
	require.True(t, ok)
	assert.Equal(t, e, epoch)
	assert.Equal(t, streamID{1700000000000, 3}, id)
	assert.Equal(t, "a payload with spaces", string(payload))
	assert.Same(t, &msg[len(msg)-1], &payload[len(payload)-1], "the payload is a part of the message, not a copy")

	_, _, payload, ok = splitWakeUp([]byte(e + " 1-0 "))
	require.True(t, ok)
	assert.Empty(t, payload)

	for _, bad := range []string{
		"", " ", e, e + " 1-0", e + "1-0 p", "zzzzzzzzzzzz 1-0 p", e + "x 1-0 p",
		e + " 1 p", e + " -1-0 p", e + " 1-x p", e[:epochLen-1] + " 1-0 p",
	} {
		_, _, _, ok := splitWakeUp([]byte(bad))
		assert.False(t, ok, "%q", bad)
	}
}
