package main

import "context"

// runIdle: -conns clients connect, nothing is sent; the line's memory and
// goroutine figures are the point.
func runIdle(ctx context.Context, e *env) (result, error) {
	e.res.Msgs, e.res.Size = 0, 0
	if _, err := e.setUpHubs(ctx, e.cfg.conns); err != nil {
		return result{}, err
	}
	e.srv.describe(e.log)
	return e.res, nil
}
