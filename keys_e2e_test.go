package vastai

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddy-vastai/caddy-vastai/vastsim"
)

// Secrets of the config keys, passed through {env.*} placeholders.
const (
	keyTeamA   = "cvk_team-a-secret-0123456789abcdef"
	keyExpired = "cvk_expired-secret-0123456789abcdef"
	keyOther   = "cvk_other-pool-secret-0123456789ab"
)

// keysSite is a site that checks keys before proxying to pool llm.
const keysSite = `	vastai_keys
	vastai_proxy llm`

// keysBlock defines the config keys of these tests; extra goes inside it.
func keysBlock(extra string) string {
	return `		keys {
			poll_interval 200ms
			flush_interval 1s
			key team-a {
				secret {env.TEST_KEY_TEAM_A}
			}
			key old {
				secret {env.TEST_KEY_EXPIRED}
				expires 2020-01-01
			}
			key other {
				secret {env.TEST_KEY_OTHER}
				pools elsewhere
			}
` + extra + `
		}`
}

func setKeyEnv(t *testing.T) {
	t.Setenv("TEST_KEY_TEAM_A", keyTeamA)
	t.Setenv("TEST_KEY_EXPIRED", keyExpired)
	t.Setenv("TEST_KEY_OTHER", keyOther)
}

// keyedRequest posts body to path with the key (none when key is "")
// and returns the status, headers and body.
func keyedRequest(t testing.TB, path, key, body string) (int, http.Header, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, testProxyURL+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// apiErrorCode reads error.code of an OpenAI-shaped error.
func apiErrorCode(t testing.TB, body []byte) string {
	t.Helper()
	var e struct {
		Error struct {
			Message string `json:"message"`
			Type    string `json:"type"`
			Code    string `json:"code"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Error.Type == "" || e.Error.Message == "" {
		t.Fatalf("not an OpenAI error: %s", body)
	}
	return e.Error.Code
}

const tinyCompletion = `{"model":"vastsim/tiny-llm","prompt":"hello","max_tokens":4}`

// startKeysGateway starts one llm instance behind vastai_keys.
func startKeysGateway(t *testing.T, extraKeys, site string) (*vastsim.Sim, int64) {
	t.Helper()
	setKeyEnv(t)
	sim := newSim(t, vastsim.Options{})
	ids := launch(t, sim, 1, "llm-")
	startCaddy(t, testConfig(sim.URL(), llmPool+"\n"+keysBlock(extraKeys), site))
	waitRoutable(t, 10*time.Second, ids)
	return sim, ids[0]
}

func TestKeysRefusedBeforeUpstream(t *testing.T) {
	sim, id := startKeysGateway(t, "", keysSite)
	cases := []struct {
		name, key  string
		status     int
		code       string
		reachesSim bool
	}{
		{"missing", "", http.StatusUnauthorized, "invalid_api_key", false},
		{"unknown", "cvk_not-a-key", http.StatusUnauthorized, "invalid_api_key", false},
		{"expired", keyExpired, http.StatusUnauthorized, "invalid_api_key", false},
		{"other pool", keyOther, http.StatusForbidden, "pool_not_allowed", false},
		{"valid", keyTeamA, http.StatusOK, "", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := sim.Engine(id).Requests
			status, _, body := keyedRequest(t, "/v1/completions", tc.key, tinyCompletion)
			if status != tc.status {
				t.Fatalf("status %d, want %d: %s", status, tc.status, body)
			}
			if tc.code != "" {
				if got := apiErrorCode(t, body); got != tc.code {
					t.Errorf("code %q, want %q", got, tc.code)
				}
			}
			if reached := sim.Engine(id).Requests != before; reached != tc.reachesSim {
				t.Errorf("engine reached: %v, want %v", reached, tc.reachesSim)
			}
			if strings.Contains(string(body), tc.key) && tc.key != "" {
				t.Errorf("the answer echoes the key")
			}
		})
	}
}
