package vastsim

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"time"
)

// kv is one extra_env entry; order is kept because vast.ai echoes the
// create body's env in its own order.
type kv struct{ K, V string }

// portSpec is one container port requested with a "-p" env key.
type portSpec struct {
	port  int
	proto string // "tcp" or "udp"
}

func (p portSpec) key() string { return strconv.Itoa(p.port) + "/" + p.proto }

// sshKeyRec is an SSH key attached to an instance.
type sshKeyRec struct {
	ID        int64  `json:"id"`
	Name      string `json:"name"`
	PublicKey string `json:"public_key"`
}

// instance is the simulator's record of one contract. Status is computed
// lazily from timestamps (see actualStatus) so that no timers are needed and
// the state is always consistent under one mutex.
type instance struct {
	id      int64
	offerID int64 // 0 for instances made with Launch
	offer   Offer

	label          *string
	image          string
	runtype        string
	onstart        *string
	env            []kv
	args           []string
	templateHashID *string
	jupyterToken   string
	apiKey         string
	model          string
	diskGB         float64
	isBid          bool
	dphBase        float64
	created        time.Time
	end            time.Time
	sshPort        int
	extSSH         int // port of an external SSH server standing in for the container's (UseExternalSSH)
	localIP        string
	ports          []portSpec
	hostPorts      map[string]int // "8000/tcp" -> host port

	// Lifecycle. With manual == "" and !stopped, the status is null before
	// nullUntil, "loading" before runningAt and "running" after.
	nullUntil time.Time
	runningAt time.Time
	stopped   bool
	// scheduling: a start was asked while the machine's GPU was taken;
	// the instance stays stopped until it is free (warm.go).
	scheduling bool
	manual     string // status forced by SetStatus; overrides the lifecycle
	intended   string

	destroyedAt  time.Time
	goneAt       time.Time
	frozenStatus any // actual_status at the moment of destruction

	eng           *engine
	engSpec       EngineSpec // behaviour under load (queue.go)
	readyOverride *bool
	hung          bool
	unhang        chan struct{}
	stats         EngineStats
	conns         connCounter // outside mu: http.Server.Close waits for Serve, which reports new conns
	sshKeys       []sshKeyRec
	ssh           *sshState // nil until the instance first uses SSH

	billed, billedSecs float64   // charges booked up to billedThrough (billing.go)
	billedThrough      time.Time // zero: nothing booked since created
}

func (in *instance) destroyed() bool { return !in.destroyedAt.IsZero() }

// gone reports whether the instance has fully disappeared from the API.
func (in *instance) gone(now time.Time) bool {
	return in.destroyed() && !now.Before(in.goneAt)
}

// actualStatus returns the actual_status value (a string or nil).
func (in *instance) actualStatus(now time.Time) any {
	switch {
	case in.destroyed():
		return in.frozenStatus
	case in.manual != "":
		return in.manual
	case in.stopped && in.scheduling:
		return "scheduling"
	case in.stopped:
		return "stopped"
	case now.Before(in.nullUntil):
		return nil
	case now.Before(in.runningAt):
		return "loading"
	}
	return "running"
}

func (in *instance) isRunning(now time.Time) bool {
	st, _ := in.actualStatus(now).(string)
	return st == "running"
}

// engineReady reports whether the engine answers for real rather than with
// the portal placeholder.
func (in *instance) engineReady(now time.Time, readyDelay time.Duration) bool {
	if in.readyOverride != nil {
		return *in.readyOverride
	}
	if in.stopped || now.Before(in.runningAt) {
		return false
	}
	return !now.Before(in.runningAt.Add(readyDelay))
}

// primaryPort is the container port reported as the engine address: 8000
// when requested, else the first TCP port.
func (in *instance) primaryPort() string {
	first := ""
	for _, p := range in.ports {
		if p.proto != "tcp" {
			continue
		}
		if p.port == 8000 {
			return p.key()
		}
		if first == "" {
			first = p.key()
		}
	}
	return first
}

func randHex(nbytes int) string {
	b := make([]byte, nbytes)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// parsePortKeys extracts container ports from Docker-style env keys such as
// "-p 8000:8000" or "-p 8000:8000/udp -p 22:22".
func parsePortKeys(env []kv) []portSpec {
	var out []portSpec
	seen := map[string]bool{}
	for _, e := range env {
		if !strings.HasPrefix(e.K, "-") {
			continue
		}
		f := strings.Fields(e.K)
		for i := 0; i < len(f); i++ {
			var spec string
			switch {
			case f[i] == "-p" && i+1 < len(f):
				spec = f[i+1]
				i++
			case strings.HasPrefix(f[i], "-p") && len(f[i]) > 2 && f[i][2] != '-':
				spec = f[i][2:]
			default:
				continue
			}
			proto := "tcp"
			if base, pr, ok := strings.Cut(spec, "/"); ok {
				spec, proto = base, strings.ToLower(pr)
			}
			parts := strings.Split(spec, ":")
			n, err := strconv.Atoi(parts[len(parts)-1])
			if err != nil || n <= 0 || (proto != "tcp" && proto != "udp") {
				continue
			}
			p := portSpec{port: n, proto: proto}
			if !seen[p.key()] {
				seen[p.key()] = true
				out = append(out, p)
			}
		}
	}
	return out
}

// modelFromEnv finds the model the engine would serve, the way vLLM and
// SGLang images read it: --served-model-name wins, then --model / a
// positional model in *_ARGS, then the usual variables.
func modelFromEnv(env []kv) string {
	get := func(k string) string {
		for _, e := range env {
			if e.K == k {
				return strings.TrimSpace(e.V)
			}
		}
		return ""
	}
	argFlag := func(args, flag string) string {
		f := strings.Fields(args)
		for i, a := range f {
			if a == flag && i+1 < len(f) {
				return f[i+1]
			}
			if v, ok := strings.CutPrefix(a, flag+"="); ok {
				return v
			}
		}
		return ""
	}
	for _, k := range []string{"VLLM_ARGS", "SGLANG_ARGS"} {
		if v := argFlag(get(k), "--served-model-name"); v != "" {
			return v
		}
	}
	for _, k := range []string{"VLLM_ARGS", "SGLANG_ARGS"} {
		for _, flag := range []string{"--model", "--model-path"} {
			if v := argFlag(get(k), flag); v != "" {
				return v
			}
		}
	}
	for _, k := range []string{"VLLM_MODEL", "MODEL_ID", "MODEL_NAME", "MODEL"} {
		if v := get(k); v != "" {
			return v
		}
	}
	return "vastsim/tiny-llm"
}

// runtypeFlags renders a create runtype the way instances echo it in
// image_runtype (space-separated flags).
func runtypeFlags(rt string) string {
	switch strings.TrimSpace(rt) {
	case "", "args":
		return "args"
	case "ssh_direct", "ssh_direc":
		return "ssh ssh_direc ssh_proxy"
	case "ssh_proxy", "ssh":
		return "ssh ssh_proxy"
	case "jupyter_direct", "jupyter_direc":
		return "jupyter jupyter_direc ssh_direc ssh_proxy"
	case "jupyter_proxy", "jupyter":
		return "jupyter ssh_proxy"
	}
	return rt
}

// newInstanceLocked allocates an instance id and its static fields.
// s.mu must be held.
func (s *Sim) newInstanceLocked(o Offer, now time.Time) *instance {
	s.nextID += 1 + int64(mrand.IntN(9)) // ids grow but are not contiguous
	id := s.nextID
	end := now.Add(o.MaxDuration)
	return &instance{
		id:           id,
		offer:        o,
		jupyterToken: randHex(32),
		apiKey:       randHex(32),
		created:      now,
		end:          end,
		sshPort:      10000 + int(id%50000),
		localIP:      fmt.Sprintf("10.%d.%d.%d 172.17.0.1 \n", 2+id%200, (id/200)%250, 2+(id/50000)%250),
		intended:     "running",
		hostPorts:    map[string]int{},
		dphBase:      o.DPHBase,
		diskGB:       8,
		model:        "vastsim/tiny-llm",
	}
}

// statusMsg mirrors the human-readable status_msg of each phase.
func (in *instance) statusMsg(st any) any {
	s, _ := st.(string)
	switch s {
	case "":
		return nil
	case "loading":
		return "Pulling image " + in.image + " (simulated)"
	case "running":
		return "success, running " + in.image + "/ssh"
	case "stopped":
		return "Stopped."
	case "scheduling":
		return "Scheduling: waiting for the GPU on machine " + fmt.Sprint(in.offer.MachineID) + " to become available."
	case "exited":
		return "Error response from daemon: container exited with code 1"
	case "offline":
		return "Host is offline"
	case "unknown":
		return "No recent heartbeat from host"
	}
	return nil
}

// instanceJSON renders the instance object shared by the v1 list and the v0
// show endpoint (§9).
func (s *Sim) instanceJSON(in *instance, now time.Time) map[string]any {
	st := in.actualStatus(now)
	running := st == "running"
	o := in.offer

	curState, nextState := "running", "running"
	switch {
	case in.destroyed():
		curState, nextState = "unloaded", "unloaded"
	case in.stopped && in.scheduling:
		curState, nextState = "stopped", "running"
	case in.stopped || in.manual == "stopped":
		curState, nextState = "stopped", "stopped"
	}

	var ports any
	dpStart, dpEnd := -1, -1
	if st == nil {
		ports = nil
	} else {
		ports = map[string]any{}
	}
	sshDirect := s.sshDirectPortLocked(in)
	if running && (len(in.hostPorts) > 0 || sshDirect != 0) {
		pm := map[string]any{}
		dpStart, dpEnd = math.MaxInt, 0
		for _, p := range in.ports {
			hp, ok := in.hostPorts[p.key()]
			if !ok {
				continue
			}
			hs := strconv.Itoa(hp)
			pm[p.key()] = []any{
				map[string]any{"HostIp": "0.0.0.0", "HostPort": hs},
				map[string]any{"HostIp": "::", "HostPort": hs},
			}
			dpStart, dpEnd = min(dpStart, hp), max(dpEnd, hp)
		}
		if sshDirect != 0 {
			hs := strconv.Itoa(sshDirect)
			pm["22/tcp"] = []any{
				map[string]any{"HostIp": "0.0.0.0", "HostPort": hs},
				map[string]any{"HostIp": "::", "HostPort": hs},
			}
			dpStart, dpEnd = min(dpStart, sshDirect), max(dpEnd, sshDirect)
		}
		ports = pm
		if dpEnd == 0 {
			dpStart, dpEnd = -1, -1
		}
	}

	sshHost, sshPort := s.sshProxyEndpointLocked(in)

	var label any
	if in.label != nil {
		label = *in.label
	}
	var onstart any
	if in.onstart != nil {
		onstart = *in.onstart
	}
	var thash any
	if in.templateHashID != nil {
		thash = *in.templateHashID
	}
	extraEnv := make([]any, 0, len(in.env))
	for _, e := range in.env {
		extraEnv = append(extraEnv, []any{e.K, e.V})
	}
	args := make([]any, 0, len(in.args))
	for _, a := range in.args {
		args = append(args, a)
	}

	disk := storageHour(o.StorageCost, in.diskGB)
	total := in.dphBase + disk
	var uptime any
	if running && !in.runningAt.IsZero() {
		uptime = math.Round(now.Sub(in.runningAt).Minutes()*100) / 100
	}
	dlperf := 25.0 * float64(o.NumGPUs) * float64(o.ComputeCap) / 890
	verification := "verified"
	if !o.Verified {
		verification = "unverified"
	}
	intended := in.intended
	if in.destroyed() {
		intended = "stopped"
	}
	var offerBundle int64
	if in.offerID != 0 {
		offerBundle = in.offerID + 600000000
	} else {
		offerBundle = in.id + 500000000
	}

	return map[string]any{
		"id":                   in.id,
		"actual_status":        st,
		"intended_status":      intended,
		"cur_state":            curState,
		"next_state":           nextState,
		"status_msg":           in.statusMsg(st),
		"label":                label,
		"template_id":          nil,
		"template_hash_id":     thash,
		"template_name":        nil,
		"image_uuid":           in.image,
		"image_args":           args,
		"image_runtype":        in.runtype,
		"extra_env":            extraEnv,
		"onstart":              onstart,
		"jupyter_token":        in.jupyterToken,
		"local_ipaddrs":        in.localIP,
		"public_ipaddr":        "127.0.0.1",
		"ports":                ports,
		"direct_port_count":    o.DirectPortCount,
		"direct_port_start":    dpStart,
		"direct_port_end":      dpEnd,
		"ssh_host":             sshHost,
		"ssh_idx":              "5",
		"ssh_port":             sshPort,
		"machine_dir_ssh_port": 5300 + int(o.MachineID%700),
		"machine_id":           o.MachineID,
		"host_id":              o.HostID,
		"bundle_id":            offerBundle,
		"start_date":           float64(in.created.UnixNano()) / 1e9,
		"end_date":             float64(in.end.Unix()),
		"duration":             in.end.Sub(now).Seconds(),
		"uptime_mins":          uptime,
		"cpu_arch":             "amd64",
		"cpu_cores":            o.CPUCores,
		"cpu_cores_effective":  float64(o.CPUCores) / 2,
		"cpu_name":             o.CPUName,
		"cpu_ram":              o.CPURAM,
		"cpu_util":             0.0,
		"mem_limit":            nil,
		"mem_usage":            nil,
		"vmem_usage":           nil,
		"gpu_name":             o.GPUName,
		"gpu_arch":             "nvidia",
		"gpu_ram":              o.GPURAM,
		"gpu_totalram":         o.GPURAM * o.NumGPUs,
		"gpu_util":             nil,
		"gpu_temp":             nil,
		"gpu_frac":             1.0,
		"gpu_lanes":            16,
		"gpu_mem_bw":           900.5,
		"bw_nvlink":            0,
		"disk_name":            "Samsung SSD 990 PRO 2TB",
		"disk_space":           in.diskGB,
		"disk_bw":              2800.5,
		"disk_util":            -1,
		"disk_usage":           -1,
		"inet_up":              o.InetUp,
		"inet_down":            o.InetDown,
		"static_ip":            o.DirectPortCount > 0,
		"geolocation":          o.Geolocation,
		"country_code":         countryCode(o.Geolocation),
		"verification":         verification,
		"rentable":             true,
		"external":             false,
		"hosting_type":         0,
		"min_bid":              o.MinBid,
		"is_bid":               in.isBid,
		"dph_base":             in.dphBase,
		"dph_total":            total,
		"dlperf":               dlperf,
		"dlperf_per_dphtotal":  dlperf / total,
		"flops_per_dphtotal":   82.6 * float64(o.NumGPUs) / total,
		"total_flops":          82.6 * float64(o.NumGPUs),
		"score":                dlperf / total * o.Reliability2,
		"reliability2":         o.Reliability2,
		"os_version":           "22.04",
		"mobo_name":            "ROMED8-2T",
		"pci_gen":              4,
		"pcie_bw":              24.3,
		"num_gpus":             o.NumGPUs,
		"logo":                 "/static/logos/vastai_small2.png",
		"webpage":              nil,
		// search is the running rate; instance is the disk-only rate that
		// keeps being billed while the instance is stopped.
		"search":               costBlock(in.dphBase, disk),
		"instance":             costBlock(0, disk),
		"storage_cost":         o.StorageCost,
		"storage_total_cost":   disk,
		"vram_costperhour":     in.dphBase / float64(o.GPURAM*o.NumGPUs),
		"credit_balance":       nil,
		"credit_discount":      nil,
		"credit_discount_max":  0.4,
		"client_run_time":      1.1,
		"host_run_time":        2592000,
		"time_remaining":       "",
		"time_remaining_isbid": "",
		"volume_info":          []any{},
	}
}

// visibleLocked returns the instances the API still shows, by id.
func (s *Sim) visibleLocked(now time.Time) []*instance {
	s.scheduleLocked(now)
	out := make([]*instance, 0, len(s.instances))
	for _, in := range s.instances {
		if !in.gone(now) {
			out = append(out, in)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}

// lookupLocked returns a visible instance or nil.
func (s *Sim) lookupLocked(id int64, now time.Time) *instance {
	in := s.instances[id]
	if in == nil || in.gone(now) {
		return nil
	}
	s.scheduleLocked(now)
	// Callers may change the instance next: book its charges so far.
	in.billLocked(now)
	return in
}

// destroyLocked starts the asynchronous destruction. The container dies at
// once; the record lingers for DestroyDelay.
func (s *Sim) destroyLocked(in *instance, now time.Time) {
	if in.destroyed() {
		return
	}
	in.frozenStatus = in.actualStatus(now)
	in.destroyedAt = now
	in.goneAt = now.Add(s.opts.DestroyDelay)
	s.stopEngineLocked(in)
	s.logf("vastsim: instance %d destroyed (gone in %s)", in.id, s.opts.DestroyDelay)
}

func (s *Sim) unhangLocked(in *instance) {
	if in.hung {
		in.hung = false
		close(in.unhang)
	}
}

// offerFreeLocked reports whether an offer can be rented now: not
// withdrawn, its machine not rented by someone else, and no instance
// holding its GPU. A stopped instance holds none (its offer is rentable
// again, as on vast.ai); a destroyed one holds it until it disappears.
func (s *Sim) offerFreeLocked(o *offerState, now time.Time) bool {
	return !o.removed && !s.taken[o.MachineID] && s.offerHolderLocked(o, now, 0) == 0
}
