package vastsim

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// warmOffer is the cheapest RTX 5090 of the default catalog (machine 44001).
const (
	warmOffer   = 29940001
	warmMachine = 44001
	warmDisk    = 40.0
)

// warmDiskRate is the storage price of warmDisk GB at the default
// 0.15 $/GB/month, the only thing billed while stopped or scheduling.
var warmDiskRate = storageHour(0.15, warmDisk)

func warmCreate(t *testing.T, c *apiClient, extra map[string]any) response {
	t.Helper()
	body := map[string]any{
		"image": "vllm/vllm-openai:latest", "disk": warmDisk, "runtype": "ssh_direct", "label": "warm",
		"env": map[string]string{"VLLM_MODEL": "org/warm-model", "-p 8000:8000": "1"},
	}
	for k, v := range extra {
		body[k] = v
	}
	return c.do("PUT", fmt.Sprintf("/api/v0/asks/%d/", warmOffer), body)
}

// warmRunning creates an instance on warmOffer and waits until it runs.
func warmRunning(t *testing.T, c *apiClient) int64 {
	t.Helper()
	r := warmCreate(t, c, nil)
	if r.status != 200 {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	id := inum(t, r.obj(t)["new_contract"])
	waitStatus(t, c, id, "running")
	return id
}

func show(t *testing.T, c *apiClient, id int64) map[string]any {
	t.Helper()
	m, _ := c.do("GET", fmt.Sprintf("/api/v0/instances/%d/", id), nil).obj(t)["instances"].(map[string]any)
	if m == nil {
		t.Fatalf("instance %d not shown", id)
	}
	return m
}

func waitStatus(t *testing.T, c *apiClient, id int64, want string) {
	t.Helper()
	waitFor(t, 10*time.Second, fmt.Sprintf("instance %d %s", id, want), func() bool {
		return show(t, c, id)["actual_status"] == want
	})
}

func setState(t *testing.T, c *apiClient, id int64, state string) {
	t.Helper()
	if r := c.do("PUT", fmt.Sprintf("/api/v0/instances/%d/", id), map[string]any{"state": state}); r.status != 200 {
		t.Fatalf("state %s: %d %s", state, r.status, r.body)
	}
}

func offered(t *testing.T, c *apiClient, offerID int64) map[string]any {
	t.Helper()
	for _, o := range findOffers(t, c, map[string]any{"limit": 100}) {
		if inum(t, o["id"]) == offerID {
			return o
		}
	}
	return nil
}

// wantFields checks status fields of the instance object.
func wantFields(t *testing.T, m map[string]any, want map[string]any) {
	t.Helper()
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %v, want %v", k, m[k], v)
		}
	}
}

// wantStorageOnly checks that only the disk is billed over a stretch of
// time: the rate is the disk rate and the dollars grow no faster.
func wantStorageOnly(t *testing.T, s *Sim, id int64) {
	t.Helper()
	t0 := time.Now()
	b1, _ := s.Billing(id)
	waitFor(t, 5*time.Second, "some billed time", func() bool { return time.Since(t0) > 50*time.Millisecond })
	b2, _ := s.Billing(id)
	elapsed := time.Since(t0).Seconds()
	if math.Abs(b2.RatePerHour-warmDiskRate) > 1e-12 {
		t.Errorf("rate %v, want the disk rate %v", b2.RatePerHour, warmDiskRate)
	}
	if d := b2.Dollars - b1.Dollars; d <= 0 || d > warmDiskRate*elapsed/3600*(1+1e-9) {
		t.Errorf("charged %v over %.3fs; the disk alone is at most %v", d, elapsed, warmDiskRate*elapsed/3600)
	}
}

func TestStopReleasesGPU(t *testing.T) {
	t.Parallel()
	s, c := startSim(t, fastOpts())
	id := warmRunning(t, c)
	if offered(t, c, warmOffer) != nil {
		t.Fatal("a rented offer is still offered")
	}
	if b, _ := s.Billing(id); b.RatePerHour <= warmDiskRate {
		t.Fatalf("running rate %v does not include the GPU", b.RatePerHour)
	}
	setState(t, c, id, "stopped")
	o := offered(t, c, warmOffer)
	if o == nil {
		t.Fatal("the stopped instance's offer did not come back")
	}
	if inum(t, o["num_gpus"]) != 1 || inum(t, o["machine_id"]) != warmMachine {
		t.Fatalf("offer back with num_gpus %v machine %v", o["num_gpus"], o["machine_id"])
	}
	wantFields(t, show(t, c, id), map[string]any{"actual_status": "stopped", "intended_status": "stopped", "cur_state": "stopped", "next_state": "stopped"})
	wantStorageOnly(t, s, id)

	// Another rental takes the freed GPU (here our own second create):
	// the first instance's start now waits, and starts once it is free.
	r := warmCreate(t, c, nil)
	if r.status != 200 {
		t.Fatalf("create on the freed GPU: %d %s", r.status, r.body)
	}
	other := inum(t, r.obj(t)["new_contract"])
	setState(t, c, id, "running")
	wantFields(t, show(t, c, id), map[string]any{"actual_status": "scheduling", "intended_status": "running"})
	setState(t, c, other, "stopped")
	waitStatus(t, c, id, "running")
	setState(t, c, other, "running")
	wantFields(t, show(t, c, other), map[string]any{"actual_status": "scheduling"})
}

func TestStartWhileMachineRented(t *testing.T) {
	t.Parallel()
	s, c := startSim(t, fastOpts())
	id := warmRunning(t, c)
	before := s.info(t, id)
	prompt := strings.Repeat("A long system prompt that fills the prefix cache. ", 40)
	chat := map[string]any{"model": "org/warm-model", "max_tokens": 2, "messages": []any{map[string]any{"role": "user", "content": prompt}}}
	if r := generate(context.Background(), before, chat, nil); r.err != nil || r.status != 200 {
		t.Fatalf("chat before stop: %v %d", r.err, r.status)
	}
	if l, _ := s.EngineLoad(id); l.CachedBlocks == 0 {
		t.Fatal("the chat left nothing in the prefix cache")
	}
	setState(t, c, id, "stopped")
	s.RentMachine(warmMachine)
	if offered(t, c, warmOffer) != nil {
		t.Fatal("offer of a rented machine is offered")
	}
	setState(t, c, id, "running")
	m := show(t, c, id)
	wantFields(t, m, map[string]any{"actual_status": "scheduling", "intended_status": "running", "cur_state": "stopped", "next_state": "running"})
	if p, ok := m["ports"].(map[string]any); !ok || len(p) != 0 || inum(t, m["direct_port_start"]) != -1 {
		t.Errorf("scheduling: ports %v direct_port_start %v, want {} and -1", m["ports"], m["direct_port_start"])
	}
	if msg, _ := m["status_msg"].(string); !strings.Contains(msg, "Scheduling") {
		t.Errorf("status_msg %q", msg)
	}
	if s.info(t, id).EngineUp {
		t.Fatal("engine up while scheduling")
	}
	wantStorageOnly(t, s, id)
	// It waits however long the machine stays rented: past the loading
	// delay, still scheduling.
	t0 := time.Now()
	waitFor(t, 10*time.Second, "twice the loading delay", func() bool {
		if st := show(t, c, id)["actual_status"]; st != "scheduling" {
			t.Fatalf("left scheduling on its own: %v", st)
		}
		return time.Since(t0) > 2*fastOpts().LoadingDelay
	})

	s.ReleaseMachine(warmMachine)
	if st := show(t, c, id)["actual_status"]; st != "loading" {
		t.Fatalf("after release: %v, want loading", st)
	}
	waitStatus(t, c, id, "running")
	after := s.info(t, id)
	if r := engineReq(t, after.EngineAddr, "GET", "/v1/models", after.JupyterToken, nil); r.status != 200 || !strings.Contains(string(r.body), "org/warm-model") {
		t.Fatalf("engine after start: %d %s", r.status, r.body)
	}
	if l, _ := s.EngineLoad(id); l.CachedBlocks != 0 {
		t.Fatalf("prefix cache survived the stop: %d blocks", l.CachedBlocks)
	}
	direct, _ := sshAddrs(t, s, id)
	cl, err := sshConnect(direct, "root", s.HostKey(id), ssh.PublicKeys(newTestKey(t)))
	if err != nil {
		t.Fatalf("ssh after start: %v", err)
	}
	cl.Close()
}

func TestStopFromScheduling(t *testing.T) {
	t.Parallel()
	s, c := startSim(t, fastOpts())
	id := warmRunning(t, c)
	setState(t, c, id, "stopped")
	s.RentMachine(warmMachine)
	setState(t, c, id, "running")
	waitStatus(t, c, id, "scheduling")
	setState(t, c, id, "stopped")
	want := map[string]any{"actual_status": "stopped", "intended_status": "stopped", "cur_state": "stopped", "next_state": "stopped"}
	wantFields(t, show(t, c, id), want)
	s.ReleaseMachine(warmMachine)
	wantFields(t, show(t, c, id), want)
	if s.info(t, id).EngineUp {
		t.Fatal("a stopped instance started on release")
	}
	wantStorageOnly(t, s, id)
}

func TestCreateOnRentedMachine(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		extra  map[string]any
		status int
		want   string // exact body, or the actual_status of the instance made
	}{
		{"on-demand cancels", nil, 410, fmt.Sprintf(`{"success":false,"error":"no_such_ask","msg":"error 410/3907: no_such_ask Instance type %d is no longer available.","ask_id":%d}`, warmOffer, warmOffer)},
		{"cancel_unavail true", map[string]any{"cancel_unavail": true, "price": 0.5}, 410, ""},
		{"cancel_unavail false waits", map[string]any{"cancel_unavail": false}, 200, "scheduling"},
		{"bid waits by default", map[string]any{"price": 0.5}, 200, "scheduling"},
		{"created stopped", map[string]any{"target_state": "stopped"}, 200, "stopped"},
		{"bad cancel_unavail", map[string]any{"cancel_unavail": "yes"}, 400, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, c := startSim(t, fastOpts())
			s.RentMachine(warmMachine)
			r := warmCreate(t, c, tc.extra)
			if r.status != tc.status {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
			switch {
			case tc.status != 200 && strings.HasPrefix(tc.want, "{"):
				jsonEq(t, r.body, tc.want)
			case tc.status == 200:
				id := inum(t, r.obj(t)["new_contract"])
				wantFields(t, show(t, c, id), map[string]any{"actual_status": tc.want})
				wantStorageOnly(t, s, id)
				s.ReleaseMachine(warmMachine)
				if tc.want == "scheduling" {
					waitStatus(t, c, id, "running")
				} else {
					wantFields(t, show(t, c, id), map[string]any{"actual_status": tc.want})
				}
			}
		})
	}
}

func TestMachineControlsHTTP(t *testing.T) {
	t.Parallel()
	s, c := startSim(t, fastOpts())
	c.key = ""
	if r := c.do("GET", "/_sim/", nil); !strings.Contains(string(r.body), "/_sim/machines/{id}/rent|release") {
		t.Fatalf("GET /_sim/ does not list the machine controls: %s", r.body)
	}
	tests := []struct {
		method, path string
		status       int
		rented       bool
	}{
		{"POST", fmt.Sprintf("/_sim/machines/%d/rent", warmMachine), 200, true},
		{"POST", fmt.Sprintf("/_sim/machines/%d/release", warmMachine), 200, false},
		{"POST", fmt.Sprintf("/_sim/machines/%d/rent", warmMachine), 200, true},
		{"GET", fmt.Sprintf("/_sim/machines/%d/release", warmMachine), 405, true},
		{"POST", "/_sim/machines/x/release", 400, true},
		{"POST", fmt.Sprintf("/_sim/machines/%d/steal", warmMachine), 404, true},
	}
	for _, tc := range tests {
		r := c.do(tc.method, tc.path, nil)
		if r.status != tc.status {
			t.Fatalf("%s %s: %d %s", tc.method, tc.path, r.status, r.body)
		}
		if got := s.MachineRented(warmMachine); got != tc.rented {
			t.Fatalf("after %s %s: rented %v, want %v", tc.method, tc.path, got, tc.rented)
		}
	}
	if m := c.do("POST", fmt.Sprintf("/_sim/machines/%d/rent", warmMachine), nil).obj(t); m["rented"] != true || inum(t, m["machine_id"]) != warmMachine {
		t.Fatalf("rent answer %v", m)
	}
	if m := c.do("POST", "/_sim/instances", map[string]any{"label": "on-47123", "machine_id": 47123}).obj(t); inum(t, m["machine_id"]) != 47123 {
		t.Fatalf("launch on a machine: %v", m)
	}
	c.key = testKey
	if offered(t, c, warmOffer) != nil {
		t.Fatal("offer of a machine rented over HTTP is offered")
	}
}

func TestSchedulingShareOneGPU(t *testing.T) {
	t.Parallel()
	s, c := startSim(t, fastOpts())
	a := warmRunning(t, c)
	setState(t, c, a, "stopped")
	b := warmRunning(t, c) // the same offer, freed by a's stop
	setState(t, c, b, "stopped")
	s.RentMachine(warmMachine)
	setState(t, c, a, "running")
	setState(t, c, b, "running")
	for _, id := range []int64{a, b} {
		wantFields(t, show(t, c, id), map[string]any{"actual_status": "scheduling"})
	}
	s.ReleaseMachine(warmMachine)
	waitStatus(t, c, a, "running") // the older request wins the one GPU
	wantFields(t, show(t, c, b), map[string]any{"actual_status": "scheduling"})
	if r := warmCreate(t, c, nil); r.status != 400 || !strings.Contains(string(r.body), "no_such_ask") {
		t.Fatalf("create while the GPU is ours: %d %s", r.status, r.body)
	}
	setState(t, c, a, "stopped")
	waitStatus(t, c, b, "running")
	wantFields(t, show(t, c, a), map[string]any{"actual_status": "stopped"})
}

func TestLaunchedInstanceOnRentedMachine(t *testing.T) {
	t.Parallel()
	s, c := startSim(t, fastOpts())
	id := launch(t, s, LaunchSpec{MachineID: 47123, Running: true, Model: "org/launched"})
	setState(t, c, id, "stopped")
	s.RentMachine(47123)
	setState(t, c, id, "running")
	wantFields(t, show(t, c, id), map[string]any{"actual_status": "scheduling", "intended_status": "running"})
	s.ReleaseMachine(47123)
	waitStatus(t, c, id, "running")
	info := s.info(t, id)
	if r := engineReq(t, info.EngineAddr, "GET", "/v1/models", info.JupyterToken, nil); r.status != 200 || !strings.Contains(string(r.body), "org/launched") {
		t.Fatalf("engine after start: %d %s", r.status, r.body)
	}
}

// TestStartOfAStoppedInstanceTakesStartDelay: a start after a stop runs
// after StartDelay (the image and model are on the disk already), not
// after a create's LoadingDelay.
func TestStartOfAStoppedInstanceTakesStartDelay(t *testing.T) {
	t.Parallel()
	opts := fastOpts()
	opts.StartDelay = time.Hour
	s, c := startSim(t, opts)
	id := warmRunning(t, c)
	setState(t, c, id, "stopped")
	setState(t, c, id, "running")
	s.mu.Lock()
	left := time.Until(s.instances[id].runningAt)
	s.mu.Unlock()
	if left < 50*time.Minute {
		t.Fatalf("the start runs in %v, want StartDelay (1h), not LoadingDelay (%v)", left, opts.LoadingDelay)
	}
	if st := show(t, c, id)["actual_status"]; st == "running" {
		t.Fatalf("started instance already %v", st)
	}
}
