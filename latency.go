package wshub

import (
	"sync/atomic"
	"time"
)

// latencyBounds are the upper bounds of the buckets of the hub's latency
// histograms, in seconds: 25µs to 10s, in steps of 1, 2.5 and 5 a decade.
var latencyBounds = [...]float64{
	0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
	0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
	0.1, 0.25, 0.5, 1, 2.5, 5, 10,
}

// latencyBoundsNs are latencyBounds in nanoseconds, for observe.
var latencyBoundsNs = func() (ns [len(latencyBounds)]int64) {
	for i, b := range latencyBounds {
		ns[i] = int64(b * 1e9)
	}
	return ns
}()

// maxLatency bounds what one observation adds to a histogram's sum, so that
// an absurd publish time (a clock far off) cannot overflow it; such an
// observation still counts in the last bucket.
const maxLatency = time.Hour

// latency is a histogram of durations in the fixed buckets of latencyBounds
// that any number of goroutines observe at once, without a lock and without
// allocating: one atomic counter per bucket, one more for what is above the
// last bound, and an atomic sum. A snapshot reads the counters one by one,
// so it may see an observation in its bucket and not yet in the sum; the
// count it reports is the sum of the buckets it read.
type latency struct {
	counts [len(latencyBounds) + 1]atomic.Uint64
	sumNs  atomic.Uint64
}

// observe adds d; a negative d (clocks apart) counts as 0.
func (l *latency) observe(d time.Duration) {
	d = min(max(d, 0), maxLatency)
	i := 0
	for i < len(latencyBoundsNs) && int64(d) > latencyBoundsNs[i] {
		i++
	}
	l.counts[i].Add(1)
	l.sumNs.Add(uint64(d))
}

// snapshot returns the histogram's buckets, count and sum, in seconds.
func (l *latency) snapshot() Histogram {
	h := Histogram{
		Bounds: append([]float64(nil), latencyBounds[:]...),
		Counts: make([]uint64, len(l.counts)),
	}
	for i := range l.counts {
		h.Counts[i] = l.counts[i].Load()
		h.Count += h.Counts[i]
	}
	h.Sum = float64(l.sumNs.Load()) / 1e9
	return h
}

// monotonic returns the time on the monotonic clock, in nanoseconds since
// the process started (see mono): a stamp that fits an int64 and that wall
// clock changes do not move.
func monotonic() int64 { return mono() }
