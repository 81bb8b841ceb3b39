package main

import (
	"context"
	"time"
)

// runChurn: half the clients stay connected all along; the other half are
// slots that the client process connects and disconnects at -churn per
// second, and that leave and rejoin the topic while connected, while node 1
// broadcasts at -rate (0 means msgs/10 per second here). delivered and lost
// count the stable clients only; churners' deliveries go to stderr.
func runChurn(ctx context.Context, e *env) (result, error) {
	stable := e.cfg.conns - e.cfg.conns/2
	hubs, err := e.setUpHubs(ctx, stable)
	if err != nil {
		return result{}, err
	}
	rate := e.cfg.rate
	if rate == 0 {
		rate = max(1, float64(e.cfg.msgs)/10)
		e.logf("churn: -rate 0 means %g msgs/s here, so that the traffic lasts about 10s", rate)
	}
	if err := e.startChurn(stable); err != nil {
		return result{}, err
	}
	d, err := e.drive(ctx, traffic{
		send:    e.broadcaster(hubs.hubs[0]),
		expect:  int64(e.cfg.msgs) * int64(stable),
		rate:    rate,
		callers: 1,
	})
	if err != nil {
		return result{}, err
	}
	if err := e.stopChurn(d.drain.ChurnDelivered); err != nil {
		return result{}, err
	}
	return e.finish(ctx, d)
}

// startChurn has the client process churn the clients past the stable ones,
// from source addresses of their own, each living slots/-churn seconds on
// average, so that about slots of them are connected at any time.
func (e *env) startChurn(stable int) error {
	slots := e.cfg.conns - stable
	life := time.Duration(float64(slots) / e.cfg.churn * float64(time.Second))
	life = min(max(life, 20*time.Millisecond), 30*time.Second)
	r := e.dialRequest(opChurnStart, slots, e.tag+"-c")
	r.AddrBase = (stable + e.cfg.perAddr - 1) / e.cfg.perAddr
	r.Rate, r.LifeNS = e.cfg.churn, int64(life)
	if _, err := e.call(r); err != nil {
		return err
	}
	e.logf("churn: %d slots at %g connects/s, mean life %v", slots, e.cfg.churn, life)
	return nil
}

// stopChurn stops the churners and logs what they did; they received
// delivered messages.
func (e *env) stopChurn(delivered int64) error {
	st, err := e.call(request{Op: opChurnStop})
	if err != nil {
		return err
	}
	e.logf("churn: %d connects, %d disconnects, %d errors%s, %d connects skipped (too many alive); churners received %d messages",
		st.Connects, st.Disconnects, st.Errors, prefixed(st.FirstError), st.Skipped, delivered)
	return nil
}
