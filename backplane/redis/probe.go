package redis

import (
	"context"
	"time"
)

// probeConfig is what the probe loop needs from its backplane.
type probeConfig struct {
	interval time.Duration // Options.ProbeInterval
	// shards returns the subscribers to probe, those started so far.
	shards func() []*subscriber
	// after runs after each round of probes, bounded by one interval.
	after func(ctx context.Context)
}

// runProbes makes every subscriber probe its subscription once per
// interval, which rebuilds those whose probes do not come back, until ctx
// ends.
func runProbes(ctx context.Context, cfg probeConfig) {
	t := time.NewTicker(cfg.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		for _, s := range cfg.shards() {
			s.probe(now)
		}
		if cfg.after != nil {
			actx, cancel := context.WithTimeout(ctx, cfg.interval)
			cfg.after(actx)
			cancel()
		}
	}
}
