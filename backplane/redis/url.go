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
// The options of this package are query parameters: mode (pubsub or
// streams), prefix, probe_interval, probe_timeout (durations such as
// 500ms), shards, pipelines, max_batch, and for streams max_len, max_age and
// epoch_ttl. cluster=true connects to a Redis Cluster, with
// more seed nodes given as addr=host:port parameters. Every other parameter
// goes to go-redis (ParseURL or ParseClusterURL), for example
// dial_timeout=2s or pool_size=20.
//
// Open checks the connection with a PING bounded by ctx, so that a wrong
// address or password fails at start-up.
func Open(ctx context.Context, u *url.URL) (backplane.Backplane, error) {
	opts, rest, cluster, err := parseQuery(u)
	if err != nil {
		return nil, err
	}
	var client goredis.UniversalClient
	if cluster {
		co, err := goredis.ParseClusterURL(rest.String())
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidOptions, err)
		}
		client = goredis.NewClusterClient(co)
	} else {
		o, err := goredis.ParseURL(rest.String())
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidOptions, err)
		}
		client = goredis.NewClient(o)
	}
	if err := client.Ping(ctx).Err(); err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("%w: ping %s: %w", backplane.ErrUnavailable, rest.Redacted(), err)
	}
	b, err := New(client, opts)
	if err != nil {
		_ = client.Close()
		return nil, err
	}
	b.ownClient = true
	return b, nil
}

// parseQuery takes this package's options out of u's query and returns
// them with the URL left for go-redis.
func parseQuery(u *url.URL) (*Options, *url.URL, bool, error) {
	q := u.Query()
	o := &Options{Mode: Mode(q.Get("mode")), Prefix: q.Get("prefix")}
	var cluster bool
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
	take("shards", num(&o.Shards))
	take("pipelines", num(&o.Pipelines))
	take("max_batch", num(&o.MaxBatch))
	take("max_len", num(&o.MaxLen))
	take("max_age", dur(&o.MaxAge))
	take("epoch_ttl", dur(&o.EpochTTL))
	take("cluster", func(v string) (err error) { cluster, err = strconv.ParseBool(v); return err })
	if err != nil {
		return nil, nil, false, err
	}
	if _, err := o.withDefaults(); err != nil {
		return nil, nil, false, err
	}
	rest := *u
	rest.RawQuery = q.Encode()
	return o, &rest, cluster, nil
}
