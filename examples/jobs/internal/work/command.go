package work

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wshub/wshub"
	"github.com/wshub/wshub/backplane"
	_ "github.com/wshub/wshub/backplane/redis" // redis:// for backplane.Open
)

// RunWorker is the worker command (examples/jobs/worker): it parses args,
// works until ctx is done, then stops taking jobs, lets those it computes
// end (interrupted ones stay in the queue) and closes its hub, backplane and
// Redis client. Logs and usage go to stdout.
func RunWorker(ctx context.Context, args []string, stdout io.Writer) (err error) {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	fs.SetOutput(stdout)
	redisURL := fs.String("redis", "", "`URL` of the Redis holding the job queue (required)")
	bpURL := fs.String("backplane", "", "backplane `URL` the results are sent on (default: Redis Streams on -redis)")
	name := fs.String("name", "", "worker `name`, unique among the workers (default: random)")
	n := fs.Int("concurrency", 4, "`N` jobs computed at once")
	minDelay := fs.Duration("min-delay", 200*time.Millisecond, "shortest time a job takes")
	maxDelay := fs.Duration("max-delay", 2*time.Second, "longest time a job takes")
	claimAfter := fs.Duration("claim-after", 30*time.Second, "take over a job another worker left unacknowledged this long")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	case *redisURL == "":
		return errors.New("-redis is required")
	case *minDelay < 0 || *maxDelay < *minDelay:
		return errors.New("want 0 <= -min-delay <= -max-delay")
	}
	if *name == "" {
		b := make([]byte, 3)
		_, _ = rand.Read(b)
		*name = "w-" + hex.EncodeToString(b)
	}
	if *bpURL == "" {
		*bpURL = StreamsURL(*redisURL)
	}
	log := slog.New(slog.NewTextHandler(stdout, nil)).With("worker", *name)

	opt, err := redis.ParseURL(*redisURL)
	if err != nil {
		return fmt.Errorf("-redis: %w", err)
	}
	rdb := redis.NewClient(opt)
	defer func() { err = errors.Join(err, rdb.Close()) }()
	q, err := NewRedis(ctx, rdb, &RedisOptions{Logger: log, ClaimAfter: *claimAfter})
	if err != nil {
		return err
	}
	bp, err := backplane.Open(ctx, *bpURL, backplane.WithLogger(log))
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, bp.Close()) }()
	// A hub that serves no one: its Send reaches the user's sessions on
	// every node of the backplane.
	hub, err := wshub.New(&wshub.Options{Backplane: bp, NodeID: *name, Logger: log})
	if err != nil {
		return err
	}
	w := &Worker{Queue: q, Hub: hub, Name: *name, Concurrency: *n, Delay: RandomDelay(*minDelay, *maxDelay), Logger: log}
	log.Info("worker started", "redis", *redisURL, "backplane", *bpURL, "concurrency", *n)
	_ = w.Run(ctx)
	log.Info("worker stopping")
	cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = hub.Close(cctx)
	log.Info("worker stopped")
	return err
}
