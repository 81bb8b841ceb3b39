package redis

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/wshub/wshub/backplane"
)

func init() {
	backplane.Register("redis", Open)
	backplane.Register("rediss", Open)
}

// Open opens a backplane from a redis:// or rediss:// (TLS) URL, making and
// owning its client: Close closes it. It is registered with backplane.Open:
//
//	redis://[user:password@]host:port[/db][?option=value&...]
//
// The backplane is a *PubSub, or a *Streams with mode=streams. The options
// of this package are query parameters: mode (pubsub, the default, or
// streams), prefix, probe_interval, probe_timeout, presence_ttl and linger
// (durations such as 500ms; linger=0 turns lingering off), shards,
// pipelines, max_batch, and, with mode=streams only, max_len, max_age and
// epoch_ttl. cluster=true connects to a Redis
// Cluster, with more seed nodes given as addr=host:port parameters. Every
// other parameter goes to go-redis (ParseURL or ParseClusterURL), for
// example dial_timeout=2s or pool_size=20.
//
// Open checks the connection with a PING bounded by ctx, so that a wrong
// address or password fails at start-up.
//
// o.Logger becomes Options.Logger. It does not reach go-redis, whose own
// lines ("redis: connection pool: failed to dial ...") go to the logger
// that go-redis v9 keeps for the whole process: see the package
// documentation for the one call that quiets or redirects them.
func Open(ctx context.Context, u *url.URL, o backplane.OpenOptions) (backplane.Backplane, error) {
	cfg, err := parseQuery(u)
	if err != nil {
		return nil, err
	}
	cfg.opts.Logger = o.Logger
	var client goredis.UniversalClient
	if cfg.cluster {
		co, err := goredis.ParseClusterURL(cfg.rest.String())
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidOptions, err)
		}
		client = goredis.NewClusterClient(co)
	} else {
		o, err := goredis.ParseURL(cfg.rest.String())
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidOptions, err)
		}
		client = goredis.NewClient(o)
	}
	if err := client.Ping(ctx).Err(); err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("%w: ping %s: %w", backplane.ErrUnavailable, cfg.rest.Redacted(), err)
	}
	if cfg.streams {
		s, err := NewStreams(client, &cfg.opts)
		if err != nil {
			_ = client.Close()
			return nil, err
		}
		s.ownClient = true
		return s, nil
	}
	p, err := NewPubSub(client, &cfg.opts.Options)
	if err != nil {
		_ = client.Close()
		return nil, err
	}
	p.ownClient = true
	return p, nil
}

// urlConfig is what parseQuery finds in a URL.
type urlConfig struct {
	streams bool           // mode=streams
	opts    StreamsOptions // the retention fields only with streams
	rest    *url.URL       // the URL left for go-redis
	cluster bool           // cluster=true
}

// streamsOnly are the query parameters that only mode=streams takes.
func streamsOnly() []string { return []string{"max_len", "max_age", "epoch_ttl"} }

// parseQuery takes this package's options out of u's query and returns
// them with the URL left for go-redis.
func parseQuery(u *url.URL) (urlConfig, error) {
	q := u.Query()
	var cfg urlConfig
	switch m := q.Get("mode"); m {
	case "", "pubsub":
	case "streams":
		cfg.streams = true
	default:
		return urlConfig{}, fmt.Errorf("%w: unknown mode %q", ErrInvalidOptions, m)
	}
	if !cfg.streams {
		for _, key := range streamsOnly() {
			if q.Has(key) {
				return urlConfig{}, fmt.Errorf("%w: %s needs mode=streams", ErrInvalidOptions, key)
			}
		}
	}
	o := &cfg.opts
	o.Prefix = q.Get("prefix")
	var err error
	take := func(key string, parse func(string) error) {
		v := q.Get(key)
		q.Del(key)
		if v == "" || err != nil {
			return
		}
		if perr := parse(v); perr != nil {
			err = fmt.Errorf("%w: %s=%q: %w", ErrInvalidOptions, key, v, perr)
		}
	}
	q.Del("mode")
	q.Del("prefix")
	dur := func(d *time.Duration) func(string) error {
		return func(v string) (err error) { *d, err = time.ParseDuration(v); return err }
	}
	num := func(n *int) func(string) error {
		return func(v string) (err error) { *n, err = strconv.Atoi(v); return err }
	}
	take("probe_interval", dur(&o.ProbeInterval))
	take("probe_timeout", dur(&o.ProbeTimeout))
	take("presence_ttl", dur(&o.PresenceTTL))
	take("shards", num(&o.Shards))
	take("pipelines", num(&o.Pipelines))
	take("max_batch", num(&o.MaxBatch))
	take("linger", func(v string) (err error) {
		if o.Linger, err = time.ParseDuration(v); err == nil && o.Linger == 0 {
			o.Linger = -1 // off, where the field's zero is the default
		}
		return err
	})
	take("max_len", num(&o.MaxLen))
	take("max_age", dur(&o.MaxAge))
	take("epoch_ttl", dur(&o.EpochTTL))
	take("cluster", func(v string) (err error) { cfg.cluster, err = strconv.ParseBool(v); return err })
	if err != nil {
		return urlConfig{}, err
	}
	if cfg.streams {
		_, err = o.withDefaults()
	} else {
		_, err = o.Options.withDefaults()
	}
	if err != nil {
		return urlConfig{}, err
	}
	rest := *u
	rest.RawQuery = q.Encode()
	cfg.rest = &rest
	return cfg, nil
}
