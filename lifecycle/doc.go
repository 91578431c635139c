// Package lifecycle manages the fleet of vast.ai instances that a
// caddy-vastai gateway owns: it provisions them, verifies their destruction,
// reconciles what the API shows against what the gateway recorded, and keeps
// spending inside the configured budgets. It has no Caddy dependency; the
// Caddy app wires it to the vast.ai client, to Caddy's storage and to the
// routing side's health view.
//
// Money is on the line, so the package is built around a few rules learnt
// from public bug reports against other vast.ai tooling, where each was
// broken and cost money:
//
//   - Every instance is labelled "cv:<gateway>:<pool>:<operation>" at
//     creation, and an operation record is written to the Store before the
//     create call, so that an instance can always be found again: by its
//     record, or by its label if the process dies at the worst moment.
//   - A create whose outcome is unknown is resolved by listing the label
//     before anything else; a create is never blindly retried.
//   - "Destroyed" means the show endpoint answers not-found AND a successful
//     listing omits the instance. DELETE is re-issued with capped backoff
//     until that holds; an instance id is never forgotten before.
//   - A failed or unparseable listing is "unknown", never "empty": nothing
//     is destroyed, adopted or marked gone while the list call fails, and an
//     instance missing from several consecutive successful listings is only
//     marked gone once the show endpoint confirms it.
//   - Stopping the manager destroys nothing. Work in progress is persisted
//     and resumed by the next Manager over the same Store.
//   - Several processes sharing one Store coordinate through a Store lock:
//     provisioning decisions and reconciliation happen under it, and each
//     in-progress operation is leased to one process at a time.
//   - Instances other gateways labelled ("cv:<other>:...") and unlabelled
//     instances are never touched, except by an explicit forced destroy.
//
// Autoscaled pools (PoolTemplate.Autoscale; autoscale.go, warm.go) are
// sized by the caller through SetDesired instead of min_instances.
// Reconciliation converges them: up by starting the cheapest stopped
// ("warm") instance first (KindStart), else creating; down by draining the
// most expensive instance, then stopping it (KindStop) while the warm pool
// has room, destroying it otherwise. A drain that times out gives the
// scale-down up (requests in flight are never cut); a start that waits in
// "scheduling" (its machine's GPU was rented by someone else) is stopped
// again after start_timeout, and destroyed after two such failures. Before
// the first SetDesired after a start, a pool's size is left alone. Run
// reconciles on Kick and every ScaleRetryInterval while a pool is not at
// its desired count; refusals are kept in PoolScale, never retried in a
// tight loop.
package lifecycle
