package vastsim

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"time"
)

// LaunchSpec describes an instance that appears on the account without a
// create call through the API, as if started from the console or by another
// tool. Zero fields take defaults.
type LaunchSpec struct {
	// Label is the instance label; "" leaves it unset (null).
	Label string
	// GPUName defaults to "RTX 4090".
	GPUName string
	// NumGPUs defaults to 1.
	NumGPUs int
	// DPH is the GPU price in $/hour; default 0.35 per GPU.
	DPH float64
	// Env becomes extra_env (sorted by key), followed by "-p Port:Port".
	Env map[string]string
	// Port is the engine's container port; default 8000.
	Port int
	// Model is what the engine serves; default from Env (VLLM_MODEL, ...)
	// or "vastsim/tiny-llm".
	Model string
	// Running skips loading: the instance is "running" at once.
	Running bool
	// MachineID defaults to a synthetic machine.
	MachineID int64
	// Runtype is the create runtype the instance reports in image_runtype
	// ("ssh_direct", "ssh_proxy", "jupyter_direct", "args", ...); default
	// "ssh_direct", which gives SSH both a direct and a proxy path.
	Runtype string
	// Engine is how the engine behaves under load (queue.go); the zero
	// value is the original unlimited engine.
	Engine EngineSpec
}

// Launch adds an instance to the account and returns its id. Its engine
// starts listening at once (answering the placeholder until it runs).
func (s *Sim) Launch(spec LaunchSpec) (int64, error) {
	port := spec.Port
	if port == 0 {
		port = 8000
	}
	if port < 0 {
		return 0, errors.New("vastsim: invalid port")
	}
	if err := spec.Engine.validate(); err != nil {
		return 0, err
	}
	o := Offer{GPUName: spec.GPUName, NumGPUs: spec.NumGPUs, DPHBase: spec.DPH, MachineID: spec.MachineID, DirectPortCount: 16}
	if o.MachineID == 0 {
		o.MachineID = 47000
	}
	o = o.withDefaults()

	keys := make([]string, 0, len(spec.Env))
	for k := range spec.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var env []kv
	for _, k := range keys {
		env = append(env, kv{K: k, V: spec.Env[k]})
	}
	pk := fmt.Sprintf("-p %d:%d", port, port)
	if _, ok := spec.Env[pk]; !ok {
		env = append(env, kv{K: pk, V: "1"})
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, errors.New("vastsim: closed")
	}
	now := time.Now()
	in := s.newInstanceLocked(o, now)
	if spec.MachineID == 0 {
		in.offer.MachineID = 47000 + in.id%1000
		in.offer.HostID = 9000 + in.offer.MachineID%1000
	}
	if spec.Label != "" {
		l := spec.Label
		in.label = &l
	}
	in.image = "vllm/vllm-openai:latest"
	in.runtype = runtypeFlags(spec.Runtype)
	if spec.Runtype == "" {
		in.runtype = runtypeFlags("ssh_direct")
	}
	in.env = env
	in.ports = []portSpec{{port: port, proto: "tcp"}}
	for _, p := range parsePortKeys(env) {
		if p.key() != in.ports[0].key() {
			in.ports = append(in.ports, p)
		}
	}
	in.model = spec.Model
	in.engSpec = spec.Engine
	if in.model == "" {
		in.model = modelFromEnv(env)
	}
	if spec.Running {
		in.nullUntil = now
		in.runningAt = now
	} else {
		in.nullUntil = now.Add(s.opts.LoadingDelay / 4)
		in.runningAt = now.Add(s.opts.LoadingDelay)
	}
	if err := s.startEngineLocked(in, false); err != nil {
		return 0, err
	}
	s.instances[in.id] = in
	s.logf("vastsim: launched instance %d (%s)", in.id, spec.Label)
	return in.id, nil
}

// Remove destroys an instance outside the client's control (console, host,
// expiry), with the same asynchronous disappearance as DELETE.
func (s *Sim) Remove(id int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if in := s.lookupLocked(id, time.Now()); in != nil {
		s.destroyLocked(in, time.Now())
	}
}

// SetStatus forces actual_status. "running" finishes loading (or revives a
// dead instance) and makes sure the engine listens, on its old ports when
// possible. "exited", "offline" and "stopped" also close the engine, since
// the container is gone or unreachable. Any other value ("loading",
// "unknown", "rebooting", "frozen", ...) only changes what the API reports
// and freezes the lifecycle there; "" returns to the normal lifecycle.
func (s *Sim) SetStatus(id int64, actual string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	in := s.lookupLocked(id, now)
	if in == nil || in.destroyed() {
		return
	}
	switch actual {
	case "running":
		in.manual = ""
		in.stopped = false
		in.scheduling = false
		if now.Before(in.runningAt) || in.runningAt.IsZero() {
			in.nullUntil = now
			in.runningAt = now
		}
		if in.eng == nil {
			if err := s.startEngineLocked(in, true); err != nil {
				s.logf("vastsim: instance %d: %v", id, err)
			}
		}
	case "exited", "offline", "stopped":
		in.manual = actual
		s.stopEngineLocked(in)
	default:
		in.manual = actual
	}
}

// SetIntendedStatus overrides intended_status, as vast.ai does when it gives
// up on an instance stuck loading.
func (s *Sim) SetIntendedStatus(id int64, st string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if in := s.lookupLocked(id, time.Now()); in != nil {
		in.intended = st
	}
}

// KillEngine closes the instance's listeners and connections while the API
// keeps reporting "running", as when a host dies before vast.ai notices.
// SetStatus(id, "running") brings the engine back.
func (s *Sim) KillEngine(id int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if in := s.instances[id]; in != nil {
		s.stopEngineLocked(in)
	}
}

// HangEngine makes the engine accept connections and never answer, until
// HangEngine(id, false) or the engine closes. Requests already waiting
// resume when it is unhung.
func (s *Sim) HangEngine(id int64, hang bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	in := s.instances[id]
	if in == nil || in.hung == hang {
		return
	}
	if hang {
		in.hung = true
		in.unhang = make(chan struct{})
	} else {
		s.unhangLocked(in)
	}
}

// SetEngineReady forces the portal placeholder off (ready) or on (not
// ready), overriding EngineReadyDelay until the instance restarts.
func (s *Sim) SetEngineReady(id int64, ready bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if in := s.instances[id]; in != nil {
		r := ready
		in.readyOverride = &r
	}
}

// SetFaults replaces the injected API faults; Faults{} clears them.
func (s *Sim) SetFaults(f Faults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f.OmitFromList = append([]int64(nil), f.OmitFromList...)
	s.faults = f
	s.faultsLeft = -1
	if f.Count > 0 {
		s.faultsLeft = f.Count
	}
}

// CurrentFaults returns the injected API faults in force.
func (s *Sim) CurrentFaults() Faults {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.faults
	f.OmitFromList = append([]int64(nil), f.OmitFromList...)
	f.Routes = append([]string(nil), f.Routes...)
	if s.faultsLeft > 0 {
		f.Count = s.faultsLeft
	}
	return f
}

// RemoveOffer withdraws an offer from the marketplace (rented elsewhere);
// a later create on it gets no_such_ask.
func (s *Sim) RemoveOffer(id int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, o := range s.offers {
		if o.ID == id {
			o.removed = true
		}
	}
}

// AddOffer puts an offer on the marketplace and returns its id.
func (s *Sim) AddOffer(o Offer) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	o = o.withDefaults()
	if o.ID == 0 {
		var maxID int64 = 29950000
		for _, x := range s.offers {
			maxID = max(maxID, x.ID)
		}
		o.ID = maxID + 1
	}
	if o.MachineID == 0 {
		o.MachineID = 45000 + o.ID%1000
		o.HostID = 9000 + o.MachineID%1000
	}
	s.offers = append(s.offers, &offerState{Offer: o})
	return o.ID
}

// InstanceInfo is a test's view of one instance, including destroyed ones.
type InstanceInfo struct {
	ID    int64
	Label string
	// ActualStatus is the actual_status the API reports ("" for null).
	ActualStatus string
	// Destroyed is true once DELETE or Remove was applied (the API may
	// still show the row for DestroyDelay).
	Destroyed bool
	// Gone is true once the API no longer shows the instance.
	Gone bool
	// EngineAddr is "127.0.0.1:port" of the engine's main port, or "" when
	// it never listened. It stays set after the engine is killed.
	EngineAddr   string
	EngineUp     bool
	JupyterToken string
	MachineID    int64
	OfferID      int64
	// Ports maps container port keys ("8000/tcp") to host ports, with
	// "22/tcp" for the SSH direct path (see SSHAddrs).
	Ports map[string]int
}

// Instances lists every instance ever created, by id.
func (s *Sim) Instances() []InstanceInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	out := make([]InstanceInfo, 0, len(s.instances))
	for _, in := range s.instances {
		st, _ := in.actualStatus(now).(string)
		info := InstanceInfo{
			ID: in.id, ActualStatus: st, Destroyed: in.destroyed(), Gone: in.gone(now),
			EngineUp: in.eng != nil, JupyterToken: in.jupyterToken,
			MachineID: in.offer.MachineID, OfferID: in.offerID, Ports: map[string]int{},
		}
		if in.label != nil {
			info.Label = *in.label
		}
		for k, v := range in.hostPorts {
			info.Ports[k] = v
		}
		if hp := s.sshDirectPortLocked(in); hp != 0 {
			info.Ports["22/tcp"] = hp
		}
		if hp, ok := in.hostPorts[in.primaryPort()]; ok {
			info.EngineAddr = "127.0.0.1:" + strconv.Itoa(hp)
		}
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Engine returns the engine counters of an instance (zero if unknown).
func (s *Sim) Engine(id int64) EngineStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	if in := s.instances[id]; in != nil {
		st := in.stats
		st.OpenConns, st.ConnsOpened = in.conns.open.Load(), in.conns.opened.Load()
		st.AbortedIDs = slices.Clone(st.AbortedIDs)
		st.Arrivals = slices.Clone(st.Arrivals)
		return st
	}
	return EngineStats{}
}

// APICalls returns a copy of the API request log, oldest first.
func (s *Sim) APICalls() []APICall {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]APICall(nil), s.calls...)
}
