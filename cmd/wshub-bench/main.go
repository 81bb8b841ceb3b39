// Command wshub-bench is the load tool of wshub. It starts K hub nodes in
// this process on one backplane, each behind its own HTTP server on
// 127.0.0.1, and drives N real WebSocket clients from a separate client
// process (this binary, re-executed), so that the server's memory and
// goroutines are measured alone. Each run prints exactly one JSON line on
// stdout; progress and diagnostics go to stderr.
//
// Usage:
//
//	wshub-bench [flags]
//
//	-scenario NAME   broadcast (default), send-user, idle, churn, raw or presence
//	-backplane URL   memory:// (default: one shared memory.Bus, a node per hub)
//	                 or any URL backplane.Open takes (one Open per hub)
//	-nodes K         hub nodes (default 1); clients are spread round-robin
//	-conns N         WebSocket clients (default 1000)
//	-msgs M          messages to publish (default 1000)
//	-size BYTES      payload size, at least 8 (default 64)
//	-rate R          messages per second in all; 0 is flat out (default 0)
//	-callers C       concurrent senders for send-user (default 16)
//	-churn C         churn: connects (and disconnects) per second (default 100)
//	-queue Q         hub sessions' SendQueueLen (default 4096)
//	-raw-of NAME     raw: mirror broadcast (default) or idle
//	-binary          send binary messages instead of text
//	-batch           hub clients ask for the batched framing (wshub_batch=1) and
//	                 count each record of a WebSocket message as a delivery;
//	                 raw ignores it (raw is the ceiling without batching)
//	-drain D         stop waiting for deliveries after D without progress (default 10s)
//	-timeout D       the whole run, processes included, ends within D (default 2m)
//	-per-addr N      clients per loopback source address 127.0.0.x (default 20000)
//	-dial-conc N     handshakes in flight (default 128)
//	-cpuprofile F    CPU profile of the server process
//	-client-cpuprofile F  CPU profile of the client process
//	-users N         presence: users online below the sockets (default 100000)
//	-members M       presence: members of the topic below the sockets (default 10000)
//	-reads R         presence: reads of each kind measured (default 1000)
//	-idle D          presence: how long the hubs' idle traffic is measured (default 10s)
//	-heapprofile F   heap profile of the server process once the clients are
//	                 connected (after the collection that measures them)
//
// The client process is this binary run as "wshub-bench -role clients": it
// reads JSON requests on stdin and answers each with one JSON line on stdout
// (see wire.go). It exits when told to, when its stdin closes, and by itself
// after the parent's -timeout; the parent kills it at the deadline.
//
// Diagnostics on stderr include, for the traffic phase, the CPU time of the
// server and the client process: on a small machine both share the cores,
// and the client process costs about as much as the server.
//
// Scenarios:
//
//   - broadcast: every client joins one topic in OnConnect; node 1
//     broadcasts M messages to it. lost = M*N - delivered.
//   - send-user: every client is a distinct user; node 1 sends M messages to
//     random users from -callers goroutines. lost = M - delivered.
//   - idle: N clients connect, nothing is sent; the line's memory and
//     goroutine figures are the point.
//   - churn: half the clients stay connected all along; the other half are
//     slots that connect and disconnect at -churn per second, leave and rejoin
//     the topic while connected (half through Session.Leave/Join, half through
//     the cluster-wide Hub.Leave/Join), while node 1 broadcasts at -rate
//     (-rate 0 means M/10 per second here). delivered and lost count the
//     stable clients only; churners' deliveries go to stderr.
//   - raw: the same clients and messages served by a bare coder/websocket
//     handler with no hub, as a ceiling for broadcast or idle (-raw-of). Its
//     scenario field reads raw-broadcast or raw-idle, backplane "none".
//   - presence: what the presence record costs in Redis, on a redis-server
//     the tool starts on a free port of 127.0.0.1 and stops (-backplane is
//     ignored; the line's backplane is that server's URL). Below the
//     sockets, -nodes (at least 2) Redis backplanes, one presence instance
//     each, hold -users users online and a topic of -members of them,
//     written with UpdatePresence in calls of 512 updates as the hub's
//     tracker writes them; it measures Redis memory per user and per topic
//     member, -conns connects and disconnects (batched, and one call each),
//     -reads reads of each kind (PresenceMember, PresenceCount, a page of
//     100 of PresenceMembers: what Hub.Online, TopicCount and TopicMembers
//     call), a refresh and the heartbeat it makes per node per second, and
//     counts and pages of a second topic grown to 1%, 10% and 100% of
//     -users. Then -nodes hubs on that Redis with their defaults and -conns
//     real WebSocket clients, each a user joining the topic: a connect and
//     a disconnect as the hubs issue them, the idle traffic per node per
//     second over -idle, and Hub.Online, TopicCount and TopicMembers. Costs
//     are Redis's own counters (INFO commandstats, total_net_input_bytes,
//     total_net_output_bytes, used_memory minus mem_clients_normal), read
//     on a connection whose own commands and bytes are taken out; requests
//     and round trips are counted on the backplanes' connections. Through
//     the hubs, their probes and refreshes are taken out of what a connect,
//     a disconnect or a read cost. The figures are the line's "presence"
//     object (see presenceFigures in scenario_presence.go): each cost has
//     round_trips, requests (commands sent, a script one), cmds (commands
//     Redis ran, scripts' included), in_bytes and out_bytes (as Redis
//     counts them), sent and ran by command, and for reads and refreshes
//     p50_us and p99_us (Go wall time of one call).
//
// The JSON line has scenario, backplane, nodes, conns, msgs, size, batch
// (whether the clients used the batched framing: -batch, and never for raw),
// delivered, lost, deliveries_per_s (delivered over the time from the first send to the
// last arrival), p50_ms, p99_ms, max_ms (send to arrival: each payload starts
// with its send time, see stampLen), server_bytes_per_conn (HeapInuse +
// StackInuse after runtime.GC with the clients connected, minus the same
// before they connected, over the clients) and goroutines_per_conn (the
// same with runtime.NumGoroutine). Both are measured in every scenario, with
// the clients connected and before any traffic. Only presence adds a field,
// presence. rate is -rate. The traffic
// phase's CPU time, from its first send to the end of the drain, is in
// server_cpu_s (this process: hubs and backplane clients), client_cpu_s (the
// client process) and redis_cpu_s (with a redis:// backplane, the Redis
// server's used_cpu_sys and used_cpu_user from INFO cpu; 0 otherwise), and
// deliveries_per_server_cpu_s is delivered over server_cpu_s: the cost of a
// delivery, which on a machine whose cores the client process shares matters
// more than deliveries_per_s. server_writes is the server process's write
// system calls in that phase (Linux's /proc/self/io; 0 elsewhere).
//
// Every scenario that sends has a fixed-rate mode, -rate R: message i is due
// at i/R seconds after the first and its latency counts from when it was due,
// so that a sender that falls behind cannot hide its backlog.
//
// With -batch, a delivery is a record, not a WebSocket message: the client
// reads each message whole into a buffer it reuses (growing it when a
// message is larger), splits it into its records and takes each record's
// latency from the stamp at the start of that record's payload, against the
// arrival of the message that carried it. The drain diagnostics on stderr
// give the number of WebSocket messages, hence records per message.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if args, ok := childInvocation(os.Args[1:]); ok {
		os.Exit(childMain(args, os.Stdin, os.Stdout, os.Stderr))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	switch {
	case errors.Is(err, flag.ErrHelp):
	case err != nil:
		fmt.Fprintln(os.Stderr, "wshub-bench:", err)
		os.Exit(1)
	}
}

// run parses args, runs one scenario within -timeout and writes its JSON
// line to stdout. Every process and goroutine it started has ended when it
// returns.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	stderr = &lockedWriter{w: stderr}
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	raiseNofile(stderr)
	if cfg.cpuProf != "" {
		stop, err := startCPUProfile(cfg.cpuProf)
		if err != nil {
			return err
		}
		defer stop()
	}
	if lim := nofileLimit(); lim != 0 && uint64(cfg.conns)+64 > lim {
		fmt.Fprintf(stderr, "wshub-bench: warning: %d connections and an open-files limit of %d\n", cfg.conns, lim)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	res, err := newEnv(cfg, stderr).run(ctx)
	if err != nil {
		return err
	}
	return writeLine(stdout, res)
}
