package vastai

// Process-level tests: the built Caddy binary (go build ./cmd/caddy) run as
// real processes against vastsim, killed with SIGKILL at each step of a
// provisioning, and two of them sharing one storage folder.

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-vastai/caddy-vastai/vastsim"
)

var (
	caddyBinOnce sync.Once
	caddyBin     string
	caddyBinErr  error
)

// builtCaddy builds ./cmd/caddy once per test binary.
func builtCaddy(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the Caddy binary")
	}
	caddyBinOnce.Do(func() {
		goBin, err := exec.LookPath("go")
		if err != nil {
			goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		dir, err := os.MkdirTemp("", "caddy-vastai-bin-")
		if err != nil {
			caddyBinErr = err
			return
		}
		caddyBin = filepath.Join(dir, "caddy")
		out, err := exec.Command(goBin, "build", "-o", caddyBin, "./cmd/caddy").CombinedOutput()
		if err != nil {
			caddyBinErr = fmt.Errorf("go build ./cmd/caddy: %v: %s", err, out)
		}
	})
	if caddyBinErr != nil {
		t.Fatal(caddyBinErr)
	}
	return caddyBin
}

var (
	portsMu   sync.Mutex
	portsUsed = map[int]bool{}
)

// freeTCPPort returns a loopback port that is free now and that this test
// binary has not handed out before (the kernel may offer a port again as
// soon as it is closed).
func freeTCPPort(t *testing.T) int {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for i := 0; i < 100; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if !portsUsed[port] {
			portsUsed[port] = true
			return port
		}
	}
	t.Fatal("no fresh loopback port")
	return 0
}

// caddyProc is one running Caddy process.
type caddyProc struct {
	t      *testing.T
	cmd    *exec.Cmd
	exited chan struct{}
	admin  string
	log    string
}

// procConfig is the config of one process. It has no skip_install_trust:
// that option loads Caddy's pki app, and two processes creating the local
// CA in one storage folder at the same moment race (a Caddy limitation
// unrelated to the plugin); plain http sites need no CA.
func procConfig(adminPort, httpPort int, storage, simURL string, minInstances int, reconcile string) string {
	return fmt.Sprintf(`{
	admin 127.0.0.1:%d
	storage file_system %s
	vastai {
		api_key {env.VAST_API_KEY}
		api_url %s
		poll_interval 500ms
		lease_ttl 2s
		provision_poll_interval 300ms
		reconcile_interval %s
		pool llm {
			health {
				interval 200ms
				timeout 1s
			}
			provision {
				image vllm/vllm-openai:latest
				offer {
					gpu_name "RTX 4090"
				}
				min_instances %d
				max_instances 4
				ready_timeout 30s
			}
		}
	}
}

http://127.0.0.1:%d {
	vastai_proxy llm
}
`, adminPort, storage, simURL, reconcile, minInstances, httpPort)
}

// startProc runs the binary with cfg until the test ends (or kill).
func startProc(t *testing.T, bin, dir, name, cfg string, adminPort int) *caddyProc {
	t.Helper()
	cfgPath := filepath.Join(dir, name+".Caddyfile")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &caddyProc{t: t, admin: fmt.Sprintf("http://127.0.0.1:%d", adminPort), log: filepath.Join(dir, name+".log")}
	logFile, err := os.OpenFile(p.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(bin, "run", "--config", cfgPath, "--adapter", "caddyfile")
	p.cmd.Env = append(os.Environ(), "VAST_API_KEY="+testAPIKey,
		"XDG_CONFIG_HOME="+filepath.Join(dir, "xdg-config"), "XDG_DATA_HOME="+filepath.Join(dir, "xdg-data"))
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(exited) }()
	p.exited = exited
	t.Cleanup(func() { p.kill(); logFile.Close() })
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(p.admin + "/vastai/status")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		select {
		case <-exited:
			t.Fatalf("%s exited (%v) before its admin endpoint came up:\n%s", name, p.cmd.ProcessState, p.logTail())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s's admin endpoint did not come up within 30s:\n%s", name, p.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// logTail returns the end of the process's log, for failure messages.
func (p *caddyProc) logTail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// kill ends the process with SIGKILL: no cleanup code of ours runs.
func (p *caddyProc) kill() {
	p.stop(syscall.SIGKILL)
}

// stop sends sig and waits for the process to exit.
func (p *caddyProc) stop(sig os.Signal) {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(sig)
	<-p.exited
}

func (p *caddyProc) do(method, path string) (int, []byte) {
	p.t.Helper()
	req, _ := http.NewRequest(method, p.admin+path, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		p.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (p *caddyProc) provision() operation {
	p.t.Helper()
	code, body := p.do(http.MethodPost, "/vastai/pools/llm/instances")
	var out struct {
		Operations []operation `json:"operations"`
	}
	if code != http.StatusAccepted || json.Unmarshal(body, &out) != nil || len(out.Operations) != 1 {
		p.t.Fatalf("provision: %d %s", code, body)
	}
	return out.Operations[0]
}

func (p *caddyProc) operation(id string) (operation, bool) {
	code, body := p.do(http.MethodGet, "/vastai/operations/"+id)
	var op operation
	return op, code == http.StatusOK && json.Unmarshal(body, &op) == nil
}

// watchLive records the largest number of live labelled instances seen
// until stop is called.
func watchLive(sim *vastsim.Sim) (max func() int, stop func()) {
	var mu sync.Mutex
	peak := 0
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			n := len(ours(sim))
			mu.Lock()
			peak = maxInt(peak, n)
			mu.Unlock()
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	var once sync.Once
	return func() int { mu.Lock(); defer mu.Unlock(); return peak }, func() { once.Do(func() { close(done) }) }
}

func maxInt(a, b int) int {
	if a > b {
		return a
	}
	return b
}

func TestKill9DuringProvisioningLeaksNothing(t *testing.T) {
	bin := builtCaddy(t)
	cases := []struct {
		name string
		sim  vastsim.Options
		// arm sets up the simulator before the provisioning request;
		// crashPoint waits for the moment to kill.
		arm        func(sim *vastsim.Sim)
		crashPoint func(t *testing.T, sim *vastsim.Sim, p *caddyProc, op operation)
	}{
		{
			name: "before create",
			arm: func(sim *vastsim.Sim) {
				sim.SetFaults(vastsim.Faults{Latency: 3 * time.Second, Routes: []string{"POST /api/v0/bundles/", "GET /api/v0/bundles/"}})
			},
			crashPoint: func(t *testing.T, sim *vastsim.Sim, p *caddyProc, op operation) {},
		},
		{
			name: "after create, before the answer",
			arm: func(sim *vastsim.Sim) {
				sim.SetFaults(vastsim.Faults{SlowResponse: 4 * time.Second, Routes: []string{"PUT /api/v0/asks/{id}/"}})
			},
			crashPoint: func(t *testing.T, sim *vastsim.Sim, p *caddyProc, op operation) {
				waitFor(t, 15*time.Second, "the create to reach vast.ai", func() bool { return len(ours(sim)) == 1 })
			},
		},
		{
			name: "while loading",
			sim:  vastsim.Options{LoadingDelay: 8 * time.Second},
			arm:  func(sim *vastsim.Sim) {},
			crashPoint: func(t *testing.T, sim *vastsim.Sim, p *caddyProc, op operation) {
				waitFor(t, 15*time.Second, "the instance id in the record", func() bool {
					got, ok := p.operation(op.ID)
					return ok && len(got.Attempts) > 0 && got.Attempts[len(got.Attempts)-1].InstanceID != 0 && got.State == "waiting"
				})
				if l := ours(sim); len(l) != 1 || l[0].ActualStatus == "running" {
					t.Fatalf("not loading at the crash: %+v", l)
				}
			},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.sim.APIKey == "" {
				c.sim.APIKey = testAPIKey
			}
			sim := newSim(t, c.sim)
			dir := t.TempDir()
			storage := filepath.Join(dir, "storage")
			peak, stopWatch := watchLive(sim)
			defer stopWatch()

			adminPort, httpPort := freeTCPPort(t), freeTCPPort(t)
			cfg := procConfig(adminPort, httpPort, storage, sim.URL(), 0, "2s")
			first := startProc(t, bin, dir, "first", cfg, adminPort)
			c.arm(sim)
			op := first.provision()
			c.crashPoint(t, sim, first, op)
			first.kill()
			if c.name == "before create" {
				for _, call := range sim.APICalls() {
					if call.Route == "PUT /api/v0/asks/{id}/" {
						t.Fatalf("the create was sent before the crash; the case tests nothing")
					}
				}
			}
			createdBefore := ours(sim)
			sim.SetFaults(vastsim.Faults{})

			second := startProc(t, bin, dir, "second", cfg, adminPort)
			var done operation
			waitFor(t, 60*time.Second, "the resumed operation to finish", func() bool {
				got, ok := second.operation(op.ID)
				done = got
				return ok && (got.State == "succeeded" || got.State == "failed")
			})
			if done.State != "succeeded" {
				t.Fatalf("resumed operation %+v (log %s)", done, second.log)
			}
			live := ours(sim)
			if len(live) != 1 || live[0].ID != done.InstanceID {
				t.Fatalf("after the restart: live instances %+v, operation instance %d", live, done.InstanceID)
			}
			if len(createdBefore) == 1 && createdBefore[0].ID != done.InstanceID {
				t.Fatalf("the instance created before the crash (%d) was not the one kept (%d)", createdBefore[0].ID, done.InstanceID)
			}
			if p := peak(); p > 1 {
				t.Fatalf("%d instances existed at once: duplicated by the restart", p)
			}
		})
	}
}

func TestTwoProcessesSharingStorageKeepExactlyMinInstances(t *testing.T) {
	bin := builtCaddy(t)
	sim := newSim(t, vastsim.Options{LoadingDelay: time.Second})
	dir := t.TempDir()
	storage := filepath.Join(dir, "storage")
	peak, stopWatch := watchLive(sim)
	defer stopWatch()

	a1, h1, a2, h2 := freeTCPPort(t), freeTCPPort(t), freeTCPPort(t), freeTCPPort(t)
	var wg sync.WaitGroup
	var p1, p2 *caddyProc
	wg.Add(2)
	go func() {
		defer wg.Done()
		p1 = startProc(t, bin, dir, "one", procConfig(a1, h1, storage, sim.URL(), 2, "1s"), a1)
	}()
	go func() {
		defer wg.Done()
		p2 = startProc(t, bin, dir, "two", procConfig(a2, h2, storage, sim.URL(), 2, "1s"), a2)
	}()
	wg.Wait()
	if p1 == nil || p2 == nil {
		t.FailNow()
	}
	waitFor(t, 60*time.Second, "two ready instances", func() bool {
		var in []adminInstance
		code, body := p1.do(http.MethodGet, "/vastai/instances")
		if code != http.StatusOK || json.Unmarshal(body, &in) != nil {
			return false
		}
		ready := 0
		for _, i := range in {
			if i.Routable {
				ready++
			}
		}
		return ready == 2
	})
	// Several more reconcile rounds of both processes must not add any.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if n := len(ours(sim)); n != 2 {
			t.Fatalf("%d live instances, want exactly 2", n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if p := peak(); p != 2 {
		t.Fatalf("peak of %d live instances, want 2 (never more)", p)
	}

	// A clean stop of both processes leaves the fleet as it is.
	for _, p := range []*caddyProc{p1, p2} {
		p.stop(syscall.SIGTERM)
	}
	if n := len(ours(sim)); n != 2 {
		t.Fatalf("after a clean stop %d instances are left, want the 2", n)
	}
	for _, c := range sim.APICalls() {
		if c.Method == http.MethodDelete {
			t.Fatalf("a clean stop sent a DELETE: %+v", c)
		}
	}
}
