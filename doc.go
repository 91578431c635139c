// Package vastai is a Caddy plugin that fronts inference engines running on
// rented vast.ai GPU instances. This package holds the Caddy modules and the
// wiring between them; the engine lives in Caddy-free packages: vastclient
// (the vast.ai REST client), fleet (the watcher, its immutable snapshots,
// health), lifecycle (provisioning, verified destroys, reconciliation,
// budgets; its PoolTemplate carries the provision block's JSON, embedded
// by ProvisionConfig), sshpool (the SSH connection pool that also carries
// tunnels), gpumetrics (the nvidia-smi parser and collector), enginestate
// (the engines' /metrics parser and scraper, and the model learner),
// routing (in-flight accounting, the selection decision, the prefix
// index, the request-body reader), ledger (the persisted cost ledger),
// history (the dashboard's rings), keys (client API keys: hashed records,
// the snapshot by hash, limits, budget reservation, per-gateway spend),
// usage (request preparation and usage capture), autoscale (the autoscaler's
// decision engine, the scale-from-zero hold queue and the lease that lets
// one process of several act) and vastsim (a simulated vast.ai for tests and the demo). adminapi holds the /vastai/ admin API's JSON
// shapes, shared with cli and tui.
//
// # Files
//
//   - config.go: every JSON config type (App, Pool, HealthConfig,
//     TokenConfig, SSHConfig, ProvisionConfig) with its doc comments, and
//     their conversions into engine types. HealthConfig and
//     ProvisionConfig embed the engine types that carry their JSON
//     (fleet.HealthSpec, lifecycle.PoolTemplate), so there is no copy.
//   - app.go: the app (apps.vastai): Provision, Validate, Start, Stop,
//     Cleanup; the literal-secret check.
//   - shared_state.go: what survives config reloads (the state in a
//     caddy.UsagePool): the one watcher loop, the vast.ai client, and
//     the runtimes below, applied on Start and stopped on the last Cleanup.
//   - wire_lifecycle.go, wire_ssh.go, wire_ledger.go, wire_dashboard.go,
//     wire_engines.go, wire_models.go, wire_keys.go: one runtime each, hung off the
//     shared state; each file holds its apply/stop pair and the adapter
//     between that engine and the fleet.
//   - wire_autoscale.go (the decision loop, each pool's Decider and Hold,
//     the lease), hold.go (the request path's hold at zero and its 503
//     capacity_unavailable), autoscale_metrics.go, caddyfile_autoscale.go:
//     autoscaling (issue #11). The lifecycle manager does the scaling
//     itself (lifecycle: SetDesired, warm starts and stops).
//   - inflight.go: per-instance request counters (in flight, for drains
//     and the policies; requests/s), and the reservation a policy makes.
//   - upstreams.go, policy.go, transport.go: the request path;
//     requestinfo.go reads a request body once, bounded, for routing.
//   - routes_metrics.go: the route-decision counter.
//   - abort.go: client disconnects. Closing the upstream connection stops
//     vLLM; an SGLang generation whose response was closed before its end
//     is also aborted (POST /abort_request with the response's id).
//   - models.go (the vastai_models handler, http.handlers.vastai_models),
//     wire_models.go (model learning, enginestate.ModelLearner): routing
//     one site to several pools by the request's model; upstreams.go's
//     pool "*" takes the handler's choice.
//   - keys.go (the vastai_keys handler, http.handlers.vastai_keys),
//     keys_usage.go (its seam to package usage), wire_keys.go (the key
//     registry, its pricing and the per-key metrics): client keys checked
//     on the request path, limits, budgets, usage and spend per key; the
//     transport asks keyPoolRefusal before sending a key limited to pools
//     to an instance of another pool.
//   - admin.go, admin_lifecycle.go, admin_ui.go, costs.go, admin_keys.go:
//     the /vastai/ admin API (adminEndpoints maps each path to one named
//     handler), the provisioning endpoints, the dashboard, /vastai/costs,
//     /vastai/keys.
//   - admin_errors.go: the one mapping from errors to HTTP status codes.
//   - metrics.go, costs.go: Prometheus collectors (read at scrape time).
//   - caddyfile.go (the vastai global option), caddyfile_pool.go,
//     caddyfile_provision.go, caddyfile_ssh.go, caddyfile_proxy.go (the
//     vastai_proxy directive), caddyfile_models.go (the vastai_models
//     directive), caddyfile_keys.go (the keys block and the vastai_keys
//     directive), caddyfile_transport.go, caddyfile_policy.go (lb_policy
//     vastai_least_load and vastai_cache_aware): Caddyfile parsing, one
//     case per option.
//   - command.go: registers the `caddy vastai` command (package cli).
//
// # A request
//
// reverse_proxy asks Upstreams.GetUpstreams (upstreams.go) for a pool's
// targets: a read of the watcher's current snapshot, no lock, no I/O. Its
// selection policy picks one; the vastai policies (policy.go) read each
// candidate's in-flight count and the engine's last scraped queue, honour
// an X-Vastai-Instance pin or a session header, for cache_aware hash the
// prompt (requestinfo.go) against the pool's prefix index, decide with
// routing.Policy.Choose, and count the request in on the choice before it
// is dispatched (inflight.go, reserve). reverse_proxy then calls
// Transport.RoundTrip (transport.go), which looks the target's address up
// in the same kind of snapshot (fleet.Snapshot.Route), sets that
// instance's Bearer token, takes the in-flight count over (or counts the
// request in, under another policy), and sends it: directly, or for a tunnel route over the
// instance's SSH connection (state.roundTrip and dialTunnel, wire_ssh.go,
// through sshpool.Pool). Its outcome feeds passive health
// (fleet.Watcher.ReportTraffic); the in-flight count ends when the response
// body is closed, which is what a drain waits for.
//
// An autoscaled pool with no routable instance holds the request in
// GetUpstreams (hold.go): the request waits on its own goroutine in the
// pool's bounded FIFO (autoscale.Hold), the first one wakes the autoscale
// loop, and when the watcher publishes a snapshot with a routable
// instance the loop opens the Hold; each released request lets the next
// go once its headers are written to the instance (transport.go), so they
// arrive in order. A request refused (max_pending, max_wait) gets one
// placeholder upstream the transport answers with a 503
// capacity_unavailable. A pool with a routable instance pays one map
// lookup and nothing else.
//
// With model routing, the vastai_models handler (models.go) runs first: it
// reads the body's "model" (requestinfo.go: bounded, replayed intact),
// looks it up in the aliases and the learned models' snapshot
// (enginestate.Models, no lock, no I/O), and puts the chosen pool in the
// request context, where GetUpstreams with pool "*" finds it.
//
// With client keys, the vastai_keys handler (keys.go) runs before both: it
// hashes the client's key and looks it up in the registry's snapshot (no
// lock, no I/O), refuses it (401, 403, 429 with Retry-After) before any
// upstream request, reserves the request's worst-case cost under the
// key's own mutex, prepares the body (stream_options.include_usage), wraps
// the response writer to capture usage, and settles the reservation with
// the real tokens and cost when the answer ends (or releases it).
//
// # Background goroutines
//
// Every loop below belongs to the one shared state, so a reload never runs
// a second copy. App.Start calls state.apply (shared_state.go), which starts
// what is not running and restarts a runtime only when its configuration
// changed; App.Cleanup releases the state, and when the last config goes
// state.Destruct stops everything (dashboard, ledger, lifecycle, SSH, in
// that order, after the watcher) and waits for it. Stopping never destroys
// an instance.
//
//   - Watcher loop: fleet.Watcher.Run (fleet/watcher.go) lists the account
//     every poll_interval and publishes snapshots. Started by state.apply
//     on the first Start; stopped by state.Destruct (cancel, then wait on
//     state.done).
//   - Prober: fleet's prober.run (fleet/prober.go), started and awaited by
//     Watcher.Run; one short goroutine per probe, at most
//     max_concurrent_probes at once.
//   - SSH side (wire_ssh.go): applySSHLocked builds a sshpool.Pool and
//     starts one goroutine running sshRuntime.syncEndpoints (feeds the
//     collector's endpoints, prunes tunnel pools, every second), which
//     itself starts gpumetrics.Collector.Run (gpumetrics/collector.go: one
//     poll goroutine per instance each metrics_interval). The pool runs its
//     own goroutines per connection (dial, keepalive monitor, reconnect,
//     OnConnChange hook; sshpool/pool.go). stopSSHLocked, on an ssh
//     config change or removal and in Destruct, cancels them, waits for
//     syncEndpoints, then Pool.Close waits for the connection goroutines.
//   - Lifecycle manager (wire_lifecycle.go): applyLifecycleLocked starts
//     lifecycle.Manager.Run (lifecycle/manager.go: reconcile every
//     reconcile_interval, resume abandoned operations every LeaseTTL/2).
//     Each provisioning or destroy runs on its own worker goroutine
//     (Manager.startWorker), with a lease-renewal goroutine beside it
//     (opHandle.renew). stopLifecycleLocked, on a lifecycle config change
//     and in Destruct, cancels Run, waits for it, then Manager.Close waits
//     for the workers; the next manager resumes their stored operations.
//   - Ledger loop (wire_ledger.go): applyLedgerLocked starts
//     ledger.Ledger.Run (ledger/ledger.go), which looks for a new snapshot
//     every 100ms and saves the ledger to storage when due. Restarted when
//     the gateway id or storage changes; stopLedgerLocked (Destruct) waits
//     for its final save.
//   - Dashboard sampler (wire_dashboard.go): startDashboardLocked starts
//     runSampler, one point per history resolution step; stopDashboardLocked
//     (Destruct) stops it.
//   - Engine scraper (wire_engines.go): applyEnginesLocked starts
//     enginestate.Scraper.Run (enginestate/scraper.go), which scrapes every
//     routable instance's /metrics each scrape_interval, one short
//     goroutine per scrape, at most max_concurrent_scrapes at once.
//     Restarted only when the engines settings change; stopEnginesLocked
//     (Destruct) cancels it and waits for its scrapes.
//   - Aborts (abort.go): one short goroutine per SGLang generation a
//     client left, at most maxConcurrentAborts at once, each ended by
//     abortTimeout; there is no loop to stop.
//   - Model learner (wire_models.go): applyModelsLocked starts
//     enginestate.ModelLearner.Run while the loaded config has a
//     vastai_models handler (its Provision sets App.modelRouting before
//     Start). Every 250ms it looks at the routable instances and reads the
//     GET /v1/models of each new one, then every 30s (until a first
//     success: after 2s, doubling per failure), at most 16 at once, each
//     bounded to 5s and 1 MiB.
//     stopModelsLocked, on a config without vastai_models and in
//     Destruct, cancels it and waits for its reads.
//   - Key registry (wire_keys.go): applyKeysLocked starts
//     keys.Registry.Run, which reads the keys created through the admin API,
//     revocations and the other gateways' spend and reservations from storage every
//     poll_interval (2s) and writes this gateway's spend every
//     flush_interval (5s), publishing a new snapshot after each read. The
//     registry (with every key's reservations and spend) is kept across
//     reloads; the loop restarts only when its intervals or the gateway id
//     change. stopKeysLocked (Destruct) cancels it and waits for its last
//     flush.
//   - Autoscale loop (wire_autoscale.go): applyAutoscaleLocked starts
//     runAutoscale while some pool has an autoscale block: it samples each
//     pool's load every half bucket, decides every decision_interval (at
//     once when a held request wakes it), hands the count to
//     lifecycle.Manager.SetDesired when this process holds the autoscaler
//     lease (autoscale.Lease in storage), and opens or closes the holds on
//     every published snapshot (fleet.Watcher.Changed). A reload stops it,
//     carries each pool's Decider over (windows kept) and starts it again;
//     stopAutoscaleLocked (Destruct) stops it, then the holds are released
//     and the lease handed over.
//   - Event streams (admin_ui.go): each GET /vastai/events runs on the admin
//     server's request goroutine, at most maxEventStreams at once, until the
//     client goes, its config is unloaded, or a write stalls.
package vastai
