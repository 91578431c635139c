package vastai

import (
	"strings"
	"testing"
	"time"

	"github.com/caddy-vastai/caddy-vastai/vastsim"
)

// TestWrongAPIKeyIsReportedAsNeverListed checks what an operator sees with
// a rejected key (vast.ai answers the list with 404 auth_error): the status
// says the listing never succeeded and why, the stale time grows instead of
// reading 0, and a metric shows it.
func TestWrongAPIKeyIsReportedAsNeverListed(t *testing.T) {
	sim := newSim(t, vastsim.Options{APIKey: "the-real-key-is-something-else-0123456789", AuthErrorStatus: 404})
	launch(t, sim, 1, "llm-")
	startCaddy(t, testConfig(sim.URL(), llmPool, `	vastai_proxy llm`))
	var st map[string]any
	waitFor(t, 60*time.Second, "the status to report the rejected key", func() bool {
		st = nil
		adminGET(t, "/vastai/status", &st)
		stale, _ := st["stale_seconds"].(float64)
		return st["consecutive_failures"].(float64) >= 2 && stale > 0
	})
	for k, want := range map[string]any{"auth_error": true, "never_succeeded": true, "listing_ok": false, "last_success": nil} {
		if got, ok := st[k]; !ok || got != want {
			t.Errorf("status %s = %v (present %v), want %v; status %v", k, got, ok, want, st)
		}
	}
	if e, _ := st["last_error"].(string); !strings.Contains(e, "auth_error") {
		t.Errorf("last_error %q does not say why", e)
	}
	_, metrics := adminGET(t, "/metrics", nil)
	if !strings.Contains(string(metrics), "caddy_vastai_api_auth_failed 1") {
		t.Errorf("metrics lack caddy_vastai_api_auth_failed 1:\n%s", grepLines(string(metrics), "caddy_vastai_"))
	}
}
