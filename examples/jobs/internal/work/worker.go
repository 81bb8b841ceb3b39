package work

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/wshub/wshub"
)

// Result is what a worker sends the user who asked, as JSON.
type Result struct {
	Type   string `json:"type"` // "result"
	ID     string `json:"id"`   // the job's
	Input  string `json:"input"`
	Output string `json:"output,omitempty"`
	Error  string `json:"error,omitempty"` // the input could not be computed
	Worker string `json:"worker"`
	Node   string `json:"node,omitempty"` // that queued the job
	Millis int64  `json:"ms"`             // from taking the job to sending the result
}

// Sender sends a message to every session of a user, on any node:
// *wshub.Hub.
type Sender interface {
	Send(ctx context.Context, userID string, msg wshub.Message) error
}

// Worker takes jobs from a queue, computes each after a random delay (so
// that results come back out of order) and sends the result to the job's
// user.
type Worker struct {
	Queue Queue
	// Hub sends the results; a worker's own hub on the cluster's
	// backplane, serving no one, reaches every node.
	Hub Sender
	// Name names the worker in the results and as the consumer.
	Name string
	// Concurrency is how many jobs the worker computes at once. Default 4.
	Concurrency int
	// Delay returns how long a job takes. Default: random, uniformly
	// between 200ms and 2s.
	Delay func(Job) time.Duration
	// Logger gets the worker's logs. Default: slog.Default().
	Logger *slog.Logger
}

// Run works until ctx ends. A job interrupted by ctx is left in the queue
// for the next worker.
func (w *Worker) Run(ctx context.Context) error {
	n := w.Concurrency
	if n <= 0 {
		n = 4
	}
	return w.Queue.Consume(ctx, w.Name, n, w.handle)
}

// RandomDelay returns a Delay uniformly distributed in [lo, hi].
func RandomDelay(lo, hi time.Duration) func(Job) time.Duration {
	return func(Job) time.Duration { return lo + rand.N(hi-lo+1) }
}

func (w *Worker) logger() *slog.Logger {
	if w.Logger != nil {
		return w.Logger
	}
	return slog.Default()
}

func (w *Worker) handle(ctx context.Context, j Job) error {
	start := time.Now()
	delay := w.Delay
	if delay == nil {
		delay = RandomDelay(200*time.Millisecond, 2*time.Second)
	}
	select {
	case <-time.After(delay(j)):
	case <-ctx.Done():
		return ctx.Err()
	}
	r := Result{Type: "result", ID: j.ID, Input: j.Input, Worker: w.Name, Node: j.Node}
	out, err := Compute(j.Input)
	if err != nil {
		r.Error = err.Error()
	}
	r.Output = out
	r.Millis = time.Since(start).Milliseconds()
	b, _ := json.Marshal(r)
	// The result goes to the user, not to the session that asked: whichever
	// node the user's tabs are on now, and, on a backplane with logs, to a
	// tab that reconnects and resumes after it was sent. A failed send
	// (the backplane is down) is retried until it goes through.
	backoff := 100 * time.Millisecond
	for {
		err := w.Hub.Send(ctx, j.User, wshub.TextBytes(b))
		if err == nil {
			w.logger().Info("job done", "job", j.ID, "user", j.User, "ms", r.Millis)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		w.logger().Warn("result not sent yet", "job", j.ID, "user", j.User, "err", err, "retry", backoff)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return ctx.Err()
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

// maxNumber is the largest number Compute factors: trial division up to
// its square root stays under a millisecond.
const maxNumber = 1_000_000_000_000

// Compute is the work: the prime factors of a whole number from 2 to 10^12,
// such as "2^3 × 3^2 × 5" for 360.
func Compute(input string) (string, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(input), 10, 64)
	if err != nil || n < 2 || n > maxNumber {
		return "", fmt.Errorf("not a whole number from 2 to 10^12: %.40q", input)
	}
	var parts []string
	add := func(p uint64, k int) {
		if k == 1 {
			parts = append(parts, strconv.FormatUint(p, 10))
		} else if k > 1 {
			parts = append(parts, fmt.Sprintf("%d^%d", p, k))
		}
	}
	for p := uint64(2); p*p <= n; p++ {
		k := 0
		for n%p == 0 {
			n /= p
			k++
		}
		add(p, k)
	}
	if n > 1 {
		add(n, 1)
	}
	return strings.Join(parts, " × "), nil
}

// StreamsURL returns the backplane URL for Streams mode on the Redis at
// redisURL: nodes and workers share one Redis for the queue and the
// backplane.
func StreamsURL(redisURL string) string {
	sep := "?"
	if strings.Contains(redisURL, "?") {
		sep = "&"
	}
	return redisURL + sep + "mode=streams"
}
