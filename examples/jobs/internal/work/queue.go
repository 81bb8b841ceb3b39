// Package work is the jobs example's queue and worker: a job goes in with
// Enqueue on the node that received it over a WebSocket, a worker takes it
// with Consume wherever it runs, computes it and sends the result to the
// user who asked with wshub.Hub.Send.
//
// Two queues have the same shape: Redis, a stream read by a consumer group
// (XADD, XREADGROUP, XACK, XAUTOCLAIM), for workers in other processes; and
// Memory, in one process, for the example's one-command run.
package work

import (
	"context"
	"errors"
	"regexp"
)

// Job is a unit of work: what a client asked for, and who asked.
type Job struct {
	// ID is the client's name for the job, unique per user: the result
	// carries it back, and a job enqueued twice with one ID is queued once.
	ID string `json:"id"`
	// User is the user who asked; the result is sent to them.
	User string `json:"user"`
	// Input is what to compute.
	Input string `json:"input"`
	// Node is the node that queued the job, for the page.
	Node string `json:"node,omitempty"`
}

// Limits on a job.
const (
	MaxIDLen    = 64
	MaxInputLen = 256
)

var validID = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// Check reports what is wrong with a job a client sent, or nil.
func (j Job) Check() error {
	switch {
	case !validID.MatchString(j.ID):
		return errors.New(`"id" must be 1-64 letters, digits, '-' or '_'`)
	case j.Input == "":
		return errors.New(`missing "input"`)
	case len(j.Input) > MaxInputLen:
		return errors.New(`"input" is longer than 256 bytes`)
	}
	return nil
}

// Handler handles one job. A nil error acknowledges it: it is never
// delivered again. An error leaves it in the queue, to be delivered again
// later.
type Handler func(ctx context.Context, j Job) error

// Queue is a job queue: at-least-once, so a handler may see a job again
// after a worker died before acknowledging it.
type Queue interface {
	// Enqueue adds j. A job with the ID of one of the same user's enqueued
	// within the last hour is not added again; dup reports it.
	Enqueue(ctx context.Context, j Job) (dup bool, err error)
	// Consume calls handle for the jobs it takes, at most n at a time,
	// until ctx ends, and returns once the handlers have returned.
	// consumer names the worker (for Redis, its name in the consumer
	// group).
	Consume(ctx context.Context, consumer string, n int, handle Handler) error
}

// ErrFull is Memory's Enqueue error when the queue holds its limit.
var ErrFull = errors.New("work: queue full")
