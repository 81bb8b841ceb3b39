// Command worker computes the jobs example's jobs in a process of its own:
// it reads the queue (a Redis stream, as the consumer group "workers"),
// factors each number after a random delay, so that results come back out
// of order, sends the result to the user who asked with a hub of its own on
// the cluster's backplane (Hub.Send reaches them on any node), and
// acknowledges the job. Start as many as you like:
//
//	go run ./examples/jobs/worker -redis redis://127.0.0.1:6379/0
//
// The flags are:
//
//	-redis URL        the Redis of the queue (required)
//	-backplane URL    the backplane of the nodes (default: Redis Streams on -redis)
//	-name NAME        the worker's name in the group (default: random)
//	-concurrency N    jobs computed at once (default 4)
//	-min-delay D      shortest time a job takes (default 200ms)
//	-max-delay D      longest time a job takes (default 2s)
//	-claim-after D    take over the jobs a dead worker left this long (default 30s)
//
// On SIGTERM or SIGINT it stops taking jobs; one it was computing stays in
// the queue, to be taken up by the next worker with its name, or claimed
// by another after -claim-after.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/wshub/wshub/examples/jobs/internal/work"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	context.AfterFunc(ctx, stop)
	err := work.RunWorker(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(1)
	}
}
