package main

import (
	"bufio"
	"context"
	"net/url"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// redisCPU reads the CPU time of the Redis server behind a redis:// or
// rediss:// backplane URL from INFO cpu: used_cpu_sys and used_cpu_user,
// for the main thread and its children. It is nil for other backplanes.
type redisCPU struct {
	client *goredis.Client
}

// newRedisCPU connects to the Redis of backplaneURL, if it names one; its
// own query parameters (the backplane's options) are left out. Close it
// with close.
func newRedisCPU(backplaneURL string) *redisCPU {
	u, err := url.Parse(backplaneURL)
	if err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") || u.Query().Get("cluster") == "true" {
		return nil
	}
	bare := url.URL{Scheme: u.Scheme, User: u.User, Host: u.Host, Path: u.Path}
	o, err := goredis.ParseURL(bare.String())
	if err != nil {
		return nil
	}
	o.PoolSize = 1
	return &redisCPU{client: goredis.NewClient(o)}
}

// read returns the server's CPU time, or 0 if it cannot be read.
func (r *redisCPU) read(ctx context.Context) time.Duration {
	if r == nil {
		return 0
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	info, err := r.client.Info(ctx, "cpu").Result()
	if err != nil {
		return 0
	}
	return parseRedisCPU(info)
}

// parseRedisCPU sums the used_cpu_* fields of an INFO cpu reply, in
// seconds, but the main thread's alone (used_cpu_*_main_thread), which the
// totals include.
func parseRedisCPU(info string) time.Duration {
	var total float64
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":")
		if !ok || !strings.HasPrefix(k, "used_cpu_") || strings.HasSuffix(k, "_main_thread") {
			continue
		}
		if f, err := strconv.ParseFloat(v, 64); err == nil {
			total += f
		}
	}
	return time.Duration(total * float64(time.Second))
}

func (r *redisCPU) close() {
	if r != nil {
		_ = r.client.Close()
	}
}
