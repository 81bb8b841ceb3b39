package main

import (
	"math"
	"math/bits"
	"sync/atomic"
)

// Latency is send to arrival: every payload starts with its send time (its
// stamp), and the client process records the latency of each message in a
// histogram.

// stampLen is the length of the send time at the start of every payload.
//
// A text message must be valid UTF-8, so the stamp is not 8 raw bytes of
// unix nanos (61 bits) but the nanoseconds since the run's epoch, which the
// parent hands the client process, in 8 printable characters of 6 bits each
// ('0'+v, so '0' to 'o'): 48 bits, 78 hours.
const stampLen = 8

// padByte fills a payload after its stamp.
const padByte = 'x'

// putStamp writes ns, nanoseconds since the epoch, into b[:stampLen].
func putStamp(b []byte, ns int64) {
	v := uint64(ns)
	for i := stampLen - 1; i >= 0; i-- {
		b[i] = '0' + byte(v&63)
		v >>= 6
	}
}

// getStamp reads what putStamp wrote.
func getStamp(b []byte) (int64, bool) {
	if len(b) < stampLen {
		return 0, false
	}
	var v uint64
	for i := 0; i < stampLen; i++ {
		c := b[i] - '0'
		if c >= 64 {
			return 0, false
		}
		v = v<<6 | uint64(c)
	}
	return int64(v), true
}

// The latency histogram is log-linear: values below 128 ns have a bucket each,
// above that every power of two is split in 64 buckets, so a quantile is off
// by at most 1/64 (1.6%). It holds up to 2^40 ns (18 minutes), more is
// clamped. Readers add to one of histShards copies, picked by connection, so
// that thousands of readers do not fight over the same cache lines.
const (
	subBits    = 6
	subCount   = 1 << subBits
	histMaxLog = 40
	histLen    = (histMaxLog-subBits)*subCount + 2*subCount
	histShards = 16
)

type histogram struct {
	shards [histShards][histLen]atomic.Uint64
}

func bucketOf(v int64) int {
	if v < 0 {
		v = 0
	}
	u := uint64(v)
	s := bits.Len64(u) - (subBits + 1)
	if s < 0 {
		s = 0
	}
	i := s*subCount + int(u>>uint(s))
	if i >= histLen {
		i = histLen - 1
	}
	return i
}

// bucketValue returns the middle of bucket i's range.
func bucketValue(i int) int64 {
	if i < 2*subCount {
		return int64(i)
	}
	s := i/subCount - 1
	top := uint64(i - s*subCount)
	return int64(top<<uint(s) + (uint64(1)<<uint(s))/2)
}

func (h *histogram) record(shard int, v int64) {
	h.shards[shard%histShards][bucketOf(v)].Add(1)
}

// quantiles returns the values at each of qs (0..1), in order, and the count.
func (h *histogram) quantiles(qs ...float64) ([]int64, uint64) {
	var merged [histLen]uint64
	var total uint64
	for s := range h.shards {
		for i := range merged {
			n := h.shards[s][i].Load()
			merged[i] += n
			total += n
		}
	}
	out := make([]int64, len(qs))
	if total == 0 {
		return out, 0
	}
	for k, q := range qs {
		rank := uint64(math.Ceil(q * float64(total)))
		if rank < 1 {
			rank = 1
		}
		var cum uint64
		for i, n := range merged {
			cum += n
			if cum >= rank {
				out[k] = bucketValue(i)
				break
			}
		}
	}
	return out, total
}
