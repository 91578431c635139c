package vastai

import (
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/caddy-vastai/caddy-vastai/internal/sshdtest"
	"github.com/caddy-vastai/caddy-vastai/vastsim"
)

func TestGPUMetricsFromTheSimulatorsSSH(t *testing.T) {
	dir := t.TempDir()
	keyFile, pub := writeSSHKey(t, dir)
	sim := newSim(t, vastsim.Options{SSHAuthorizedKeys: []ssh.PublicKey{pub}})
	id, err := sim.Launch(vastsim.LaunchSpec{Label: "llm-1", GPUName: "RTX 4090", NumGPUs: 2, DPH: 0.8, Running: true})
	if err != nil {
		t.Fatal(err)
	}
	startCaddy(t, sshConfig(sim.URL(), keyFile, filepath.Join(dir, "storage"), llmPool, `	vastai_proxy llm`))

	var in gpuInstance
	waitFor(t, 15*time.Second, "GPU metrics over SSH", func() bool {
		adminGET(t, fmt.Sprintf("/vastai/instances/%d", id), &in)
		return len(in.GPUs) == 2 && in.SSH != nil
	})
	if in.SSH.Path != "direct" {
		t.Errorf("ssh path %q (%s), want direct", in.SSH.Path, in.SSH.LastError)
	}
	for _, g := range in.GPUs {
		if g.UtilizationGPU == nil || g.MemoryTotalMiB == nil || *g.MemoryTotalMiB < 20000 || g.TemperatureC == nil || g.CollectedAt.IsZero() {
			t.Errorf("GPU %d figures incomplete: %+v", g.Index, g)
		}
	}
	first := in.GPUs[0].CollectedAt
	waitFor(t, 10*time.Second, "a newer GPU sample", func() bool {
		adminGET(t, fmt.Sprintf("/vastai/instances/%d", id), &in)
		return len(in.GPUs) == 2 && in.GPUs[0].CollectedAt.After(first)
	})
	_, metrics := adminGET(t, "/metrics", nil)
	for _, want := range []string{
		fmt.Sprintf(`caddy_vastai_gpu_memory_total_bytes{gpu="1",instance="%d",pool="llm"}`, id),
		fmt.Sprintf(`caddy_vastai_ssh_path{instance="%d",path="direct",pool="llm"} 1`, id),
	} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	// A metrics failure never affects routing.
	sim.SetNvidiaSMIOutput(id, "garbage", 1)
	waitFor(t, 10*time.Second, "the metrics error to be reported", func() bool {
		var raw map[string]any
		adminGET(t, fmt.Sprintf("/vastai/instances/%d", id), &raw)
		e, _ := raw["gpu_error"].(string)
		return e != ""
	})
	resp, body := completion(t, http.DefaultClient)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("traffic after a metrics failure: %d %s", resp.StatusCode, body)
	}
}

func TestTunnelTransportCarriesAStreamOverTheSimulatorsSSH(t *testing.T) {
	dir := t.TempDir()
	keyFile, pub := writeSSHKey(t, dir)
	sim := newSim(t, vastsim.Options{SSHAuthorizedKeys: []ssh.PublicKey{pub}, TokenInterval: 30 * time.Millisecond})
	ids := launch(t, sim, 2, "llm-")
	startCaddy(t, sshConfig(sim.URL(), keyFile, filepath.Join(dir, "storage"), healthPool, `	vastai_proxy llm {
		lb_policy round_robin
		transport vastai {
			tunnel ssh
		}
	}`))
	waitRoutable(t, 15*time.Second, ids)

	var list []struct {
		ID       int64  `json:"id"`
		Upstream string `json:"upstream"`
	}
	adminGET(t, "/vastai/instances", &list)
	for _, in := range list {
		if !strings.HasSuffix(strings.Split(in.Upstream, ":")[0], ".vastai-tunnel") {
			t.Errorf("instance %d upstream %q is not a tunnel address", in.ID, in.Upstream)
		}
	}
	status, arrivals := streamEvents(t, "/v1/chat/completions", `{"model":"vastsim/tiny-llm","stream":true,"max_tokens":12,"messages":[{"role":"user","content":"hi"}]}`)
	if status != http.StatusOK || len(arrivals) < 12 {
		t.Fatalf("stream through the tunnel: status %d, %d events", status, len(arrivals))
	}
	if spread := arrivals[len(arrivals)-1] - arrivals[0]; spread < 5*30*time.Millisecond {
		t.Errorf("tunnelled stream was buffered: events within %s", spread)
	}
	// Traffic, probes and metrics over the same SSH connections at once
	// (run under -race in CI).
	var wg sync.WaitGroup
	errs := make(chan string, 20)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, body := completion(t, &http.Client{Timeout: 20 * time.Second})
			if resp.StatusCode != http.StatusOK {
				errs <- fmt.Sprintf("%d %s", resp.StatusCode, body)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Errorf("concurrent request through the tunnel: %s", e)
	}
	var tunnels int64
	for _, id := range ids {
		st := sim.SSHStats(id)
		tunnels += st.Direct.DirectTCPIP + st.Proxy.DirectTCPIP
		if u := sim.Engine(id).Unauthorized; u != 0 {
			t.Errorf("instance %d: %d unauthorized requests through the tunnel", id, u)
		}
	}
	if tunnels == 0 {
		t.Fatal("no direct-tcpip channel was opened: traffic did not use the tunnel")
	}
	// The engines' /metrics are scraped through the tunnel too (the
	// engine is not reachable otherwise under a tunnel address).
	for _, id := range ids {
		waitFor(t, 15*time.Second, fmt.Sprintf("instance %d's engine figures through the tunnel", id), func() bool {
			var v struct {
				Engine *struct {
					Fresh bool `json:"fresh"`
				} `json:"engine"`
			}
			adminGET(t, fmt.Sprintf("/vastai/instances/%d", id), &v)
			return v.Engine != nil && v.Engine.Fresh
		})
	}
}

// nvidiaSMIThreeGPUs is nvidia-smi's answer to gpumetrics.Query on a host
// with three GPUs, one of which reports [N/A] for some fields.
const nvidiaSMIThreeGPUs = `0, GPU-11111111-2222-3333-4444-555555555555, NVIDIA GeForce RTX 4090, 87, 41, 20110, 24564, 71, 382.45, 450.00
1, GPU-22222222-2222-3333-4444-555555555555, NVIDIA GeForce RTX 4090, 12, 3, 1024, 24564, 44, 61.20, 450.00
2, GPU-33333333-2222-3333-4444-555555555555, NVIDIA A100-SXM4-80GB, [N/A], [N/A], 81000, 81920, 39, [N/A], 400.00
`

func TestTunnelAndGPUMetricsThroughARealOpenSSHServer(t *testing.T) {
	sshd := sshdtest.Start(t, nvidiaSMIThreeGPUs)
	sim := newSim(t, vastsim.Options{TokenInterval: 30 * time.Millisecond})
	ids := launch(t, sim, 1, "llm-")
	var enginePort string
	for _, in := range sim.Instances() {
		if in.ID == ids[0] {
			_, enginePort, _ = strings.Cut(in.EngineAddr, ":")
		}
	}
	// The "instance" is this host: sshd is its SSH server, and inside it
	// the engine listens on 127.0.0.1:<enginePort>.
	sim.UseExternalSSH(ids[0], sshd.Port)
	dir := t.TempDir()
	pool := fmt.Sprintf(`		pool llm {
			label_prefix llm-
			port %s
			health {
				interval 200ms
				timeout 2s
			}
		}`, enginePort)
	startCaddy(t, sshConfig(sim.URL(), sshd.KeyFile, filepath.Join(dir, "storage"), pool, `	vastai_proxy llm {
		transport vastai {
			tunnel ssh
		}
	}`))
	waitRoutable(t, 20*time.Second, ids)

	status, arrivals := streamEvents(t, "/v1/completions", `{"model":"vastsim/tiny-llm","prompt":"hi","stream":true,"max_tokens":15}`)
	if status != http.StatusOK || len(arrivals) < 15 {
		t.Fatalf("stream through sshd: status %d, %d events", status, len(arrivals))
	}
	if spread := arrivals[len(arrivals)-1] - arrivals[0]; spread < 7*30*time.Millisecond {
		t.Errorf("stream through sshd was buffered: events within %s", spread)
	}
	if st := sim.SSHStats(ids[0]); st.Direct.DirectTCPIP+st.Proxy.DirectTCPIP != 0 {
		t.Errorf("the simulator's own SSH server carried tunnels; they must go through sshd")
	}

	var in gpuInstance
	waitFor(t, 15*time.Second, "GPU metrics through sshd", func() bool {
		adminGET(t, fmt.Sprintf("/vastai/instances/%d", ids[0]), &in)
		return len(in.GPUs) == 3
	})
	if in.SSH == nil || in.SSH.Path != "direct" {
		t.Errorf("ssh = %+v, want path direct", in.SSH)
	}
	g0, g2 := in.GPUs[0], in.GPUs[2]
	if g0.UtilizationGPU == nil || *g0.UtilizationGPU != 87 || g0.MemoryTotalMiB == nil || *g0.MemoryTotalMiB != 24564 || g0.TemperatureC == nil || *g0.TemperatureC != 71 {
		t.Errorf("GPU 0 = %+v", g0)
	}
	if g2.UtilizationGPU != nil || g2.Name != "NVIDIA A100-SXM4-80GB" || g2.MemoryTotalMiB == nil || *g2.MemoryTotalMiB != 81920 {
		t.Errorf("GPU 2 ([N/A] utilization) = %+v", g2)
	}
}

func TestChangedHostKeyIsRefusedAndReported(t *testing.T) {
	dir := t.TempDir()
	keyFile, pub := writeSSHKey(t, dir)
	sim := newSim(t, vastsim.Options{SSHAuthorizedKeys: []ssh.PublicKey{pub}})
	ids := launch(t, sim, 1, "llm-")
	id := ids[0]
	// Only the direct path: host keys are trusted per path, and this test
	// is about a key that was already trusted.
	sim.SetSSHPath(id, true, false)
	startCaddy(t, sshConfig(sim.URL(), keyFile, filepath.Join(dir, "storage"), llmPool, `	vastai_proxy llm`))
	var in gpuInstance
	waitFor(t, 15*time.Second, "the first SSH connection", func() bool {
		adminGET(t, fmt.Sprintf("/vastai/instances/%d", id), &in)
		return in.SSH != nil && in.SSH.Path == "direct" && len(in.GPUs) == 1
	})

	// The instance now presents another host key (a man in the middle, or
	// a recreated container): the connection drops, and reconnecting must
	// fail.
	sim.RotateHostKey(id)
	sim.SetSSHPath(id, false, false)
	sim.SetSSHPath(id, true, false)
	waitFor(t, 30*time.Second, "the changed host key to be refused", func() bool {
		adminGET(t, fmt.Sprintf("/vastai/instances/%d", id), &in)
		return in.SSH != nil && in.SSH.Path == "down" && strings.Contains(strings.ToLower(in.SSH.LastError), "host key")
	})
	// Routing (direct, not tunnelled) is unaffected.
	resp, body := completion(t, http.DefaultClient)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("traffic after the SSH refusal: %d %s", resp.StatusCode, body)
	}
}
