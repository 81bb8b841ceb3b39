package main

import "context"

// A scenario is one -scenario: it starts the server it drives and the
// client process (env.setUpHubs or env.setUpRaw, which connect its stable
// clients), then runs its traffic, if any, and returns the JSON line. ctx
// ends before the run's deadline, leaving time for the env to shut down
// what the scenario started once it returns.
type scenario func(ctx context.Context, e *env) (result, error)

// scenarios are the values of -scenario. Each one's function is in the file
// named after it.
var scenarios = map[string]scenario{
	"broadcast": runBroadcast,
	"send-user": runSendUser,
	"idle":      runIdle,
	"churn":     runChurn,
	"raw":       runRaw,
	"presence":  runPresence,
}
