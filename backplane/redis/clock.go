package redis

import (
	"sync/atomic"
	"time"
)

// maxClockSkew is how far ahead of the Redis server's clock, as estimated
// here, a stream entry ID may be before a wake-up carrying it is taken for
// forged: Redis makes IDs from its own clock, so a real one is never far
// ahead of it.
const maxClockSkew = 2 * time.Second

// serverClock estimates the Redis server's clock from this process's, from
// the TIME replies the backplane sees.
type serverClock struct {
	delta atomic.Int64 // server minus local, in nanoseconds
}

// observe records that the server's clock read server for a request sent
// at sent and answered now.
func (c *serverClock) observe(server, sent time.Time) {
	local := sent.Add(time.Since(sent) / 2)
	c.delta.Store(int64(server.Sub(local)))
}

// now returns the server's time now, as estimated.
func (c *serverClock) now() time.Time {
	return time.Now().Add(time.Duration(c.delta.Load()))
}

// ahead reports whether a stream ID of ms milliseconds is further ahead of
// the server's clock than any real one can be.
func (c *serverClock) ahead(ms uint64) bool {
	limit := c.now().Add(maxClockSkew).UnixMilli()
	return limit < 0 || ms > uint64(limit)
}
