package vastai

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/caddy-vastai/caddy-vastai/vastsim"
)

// TestStatusLastErrorCarriesNoInstanceSecrets makes the list endpoint fail
// with answers that echo instance tokens and env values, and checks that
// /vastai/status never shows one: neither the fields vast.ai names
// (jupyter_token, extra_env, env, instance_api_key) nor the bare tokens of
// known instances inside a message.
func TestStatusLastErrorCarriesNoInstanceSecrets(t *testing.T) {
	const (
		webPassword = "wp-E2eGeneratedPassword-51c"
		hfToken     = "hf_E2eProvisionEnvToken-0042"
		instKey     = "ik-E2eInstanceApiKey-9f9f9f9f"
	)
	sim := newSim(t, vastsim.Options{})
	id, err := sim.Launch(vastsim.LaunchSpec{Label: "llm-1", Running: true, Env: map[string]string{"WEB_PASSWORD": webPassword, "HF_TOKEN": hfToken}})
	if err != nil {
		t.Fatal(err)
	}
	var jt string
	for _, in := range sim.Instances() {
		if in.ID == id {
			jt = in.JupyterToken
		}
	}
	if len(jt) < 16 {
		t.Fatalf("instance %d has no usable jupyter token %q", id, jt)
	}
	startCaddy(t, testConfig(sim.URL(), llmPool, `	vastai_proxy llm`))
	waitRoutable(t, 30*time.Second, []int64{id})

	secrets := []string{jt, webPassword, hfToken, instKey, testAPIKey}
	bodies := []struct {
		status int
		body   string
	}{
		{400, fmt.Sprintf(`{"success":false,"error":"invalid_args","msg":"bad","jupyter_token":%q,"extra_env":[["WEB_PASSWORD",%q]],"env":{"HF_TOKEN":%q},"instance_api_key":%q}`, jt, webPassword, hfToken, instKey)},
		{400, fmt.Sprintf(`{"success":false,"error":"invalid_args","msg":"instance %d token %s password %s env %s"}`, id, jt, webPassword, hfToken)},
		{500, fmt.Sprintf("Internal Server Error: jupyter_token=%s extra_env=[[\"X\",\"%s\"]] %s", jt, webPassword, hfToken)},
		{200, fmt.Sprintf(`{"success":true,"instances":[{"id":%d,"jupyter_token":%q,"extra_env":[["WEB_PASSWORD",%q],["HF_TOKEN",%q`, id, jt, webPassword, hfToken)},
		{200, fmt.Sprintf(`{"success":false,"error":"failed","msg":"could not list %s %s"}`, jt, hfToken)},
	}
	for i, b := range bodies {
		sim.SetFaults(vastsim.Faults{Status: b.status, Body: b.body, Routes: []string{"GET /api/v1/instances/"}})
		var status struct {
			ConsecutiveFailures int    `json:"consecutive_failures"`
			LastError           string `json:"last_error"`
		}
		var raw []byte
		waitFor(t, 60*time.Second, fmt.Sprintf("the watcher to fail on body %d", i), func() bool {
			_, raw = adminGET(t, "/vastai/status", &status)
			return status.ConsecutiveFailures >= 1 && status.LastError != ""
		})
		for _, sec := range secrets {
			if strings.Contains(string(raw), sec) {
				t.Errorf("body %d: /vastai/status leaks %.8s…: %s", i, sec, raw)
			}
		}
		sim.SetFaults(vastsim.Faults{})
		waitFor(t, 60*time.Second, "the watcher to recover", func() bool {
			adminGET(t, "/vastai/status", &status)
			return status.ConsecutiveFailures == 0
		})
	}
}
