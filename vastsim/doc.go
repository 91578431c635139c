// Package vastsim is a faithful, in-process simulator of the parts of the
// vast.ai REST API that an inference gateway uses, with real state behind it
// and a real OpenAI-compatible engine listening on loopback for every
// instance.
//
// It exists so that the gateway can be tested, and demonstrated, against the
// behaviour vast.ai actually shows rather than against the documentation
// alone. It therefore reproduces the quirks of the live API that have broken
// public clients: the 410 on the v0 list, the
// keyset-paginated v1 list that refuses computed columns in filters, the
// "single object under a plural key" show endpoint that answers HTTP 200
// {"instances": null} for a destroyed instance, asynchronous destruction,
// extra_env as a list of pairs, string HostPorts with dual-stack entries that
// only appear once an instance runs, no_such_ask wrapped in a 400
// invalid_args, minimum-interval rate limits with 429 bodies in several shapes
// (some plain text) and no Retry-After, and the Instance Portal's Basic
// challenge and "not ready" placeholder in front of each engine.
//
// Every instance whose container runs also has an in-process SSH server
// (ssh.go) with its own ed25519 host key, reachable by a direct path
// (ports["22/tcp"], for ssh_direc runtypes) and a proxy path (ssh_host and
// ssh_port, with the +1 rule for Jupyter runtypes). It accepts user root
// with a public key, answers nvidia-smi with GPU figures that follow the
// engine's load, and forwards direct-tcpip channels to the engine, so that
// GPU metrics and SSH tunnels can be exercised too (HostKey, RotateHostKey,
// SetSSHPath, SSHStats, SetNvidiaSMIOutput).
//
// The simulator never imports the project's client package: its JSON is
// produced independently, so that a client bug cannot be mirrored by a
// simulator bug.
//
// Typical use in a test:
//
//	sim := vastsim.New(vastsim.Options{APIKey: "k", LoadingDelay: 200 * time.Millisecond})
//	base, err := sim.Start("")
//	defer sim.Close()
//
// Stop and start follow vast.ai (warm.go): a stop kills the container,
// keeps the disk (and the model on it) and releases the GPU, so the offer
// is rentable again and only storage is billed. A start needs the
// machine's GPU: while someone else holds it (RentMachine, or another
// rental of the same offer) the instance waits in actual_status
// "scheduling" (intended_status "running", cur_state "stopped",
// next_state "running", storage billed only), indefinitely, and starts
// through loading once the GPU is free (ReleaseMachine); its engine comes
// back with the same model and a cold prefix cache. A create on a rented
// machine fails with the 410 no_such_ask of cancel_unavail (the default
// for on-demand), or makes a scheduling instance with cancel_unavail false.
//
// The exported control methods (Launch, Remove, SetStatus, KillEngine,
// HangEngine, SetFaults, SetSSHPath, RentMachine, ReleaseMachine, ...)
// change the simulated world as vast.ai or a failing host would, and the
// observation methods (Instances, Engine, APICalls, MachineRented) let a
// test assert what the client did. The same controls are served over HTTP
// under /_sim/ (control_http.go; GET /_sim/ lists them), including
// POST /_sim/machines/{id}/rent and /release.
package vastsim
