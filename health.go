package wshub

import (
	"net/http"
)

// The reasons the health handlers answer with, in plain text. They name a
// state, never an address or a backend's error: the cause of a backplane
// failure is in Hub.Health and in the hub's log.
const (
	healthOK          = "ok"
	healthClosed      = "closed"
	healthDraining    = "draining"
	healthUnavailable = "backplane unavailable"
)

// ReadinessHandler returns an http.Handler for a readiness probe: it answers
// 200 "ok" while the node can serve new connections, and 503 with a short
// plain-text reason otherwise: "draining" once Drain was called, "closed"
// once Close was, and "backplane unavailable" while Hub.Health reports that
// the backplane cannot deliver (the error itself is left out of the answer,
// which a load balancer may show to anyone; Health returns it).
//
// Mount it where a load balancer or Kubernetes probes, for example
//
//	mux.Handle("GET /readyz", hub.ReadinessHandler())
//
// with, in the pod's container spec,
//
//	readinessProbe:
//	  httpGet: {path: /readyz, port: 8080}
//	  periodSeconds: 2
//	  failureThreshold: 1
//
// A node that is not ready is taken out of the Service's endpoints, so new
// connections go to other nodes, and is put back once it is ready again
// (the backplane came back): readiness is the check that follows Redis.
// Since Drain makes readiness fail at once and for good, the endpoints stop
// sending the node upgrades within one probe period; until then Drain
// refuses them with 503 and Retry-After.
//
// Every method gets the same answer (HEAD without a body), never cached.
func (h *Hub) ReadinessHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reason := healthOK
		switch h.serviceState() {
		case stateClosed:
			reason = healthClosed
		case stateDraining:
			reason = healthDraining
		default:
			if h.Health() != nil {
				reason = healthUnavailable
			}
		}
		writeHealth(w, r, reason)
	})
}

// LivenessHandler returns an http.Handler for a liveness probe: it answers
// 200 "ok" until Close is called, and 503 "closed" from then on.
//
//	mux.Handle("GET /healthz", hub.LivenessHandler())
//
//	livenessProbe:
//	  httpGet: {path: /healthz, port: 8080}
//	  periodSeconds: 10
//	  failureThreshold: 3
//
// It does not fail while the backplane is down or the node drains. A
// failing liveness probe makes the kubelet restart the container: that
// cannot bring Redis back, and restarting every node of a cluster at once
// when Redis blinks would cut every client at once and have them all
// reconnect to nodes that are starting, which is worse than the outage.
// Readiness takes a node out of service while its backplane is down;
// liveness only asks whether the process still serves HTTP at all (a
// handler that does not answer in the probe's timeoutSeconds fails it too).
// A closed hub serves nothing more, so once Close is called the answer is
// 503; in the usual shutdown (Drain, Close, http.Server.Shutdown, exit)
// that is moments before the process exits.
func (h *Hub) LivenessHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reason := healthOK
		if h.isClosed() {
			reason = healthClosed
		}
		writeHealth(w, r, reason)
	})
}

// writeHealth answers a probe: 200 for healthOK, 503 for any other
// reason, as plain text.
func writeHealth(w http.ResponseWriter, r *http.Request, reason string) {
	hd := w.Header()
	hd.Set("Content-Type", "text/plain; charset=utf-8")
	hd.Set("Cache-Control", "no-store")
	hd.Set("X-Content-Type-Options", "nosniff")
	status := http.StatusOK
	if reason != healthOK {
		status = http.StatusServiceUnavailable
	}
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write([]byte(reason + "\n"))
	}
}
