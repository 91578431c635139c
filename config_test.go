package vastai

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddy-vastai/caddy-vastai/fleet"
	"github.com/caddy-vastai/caddy-vastai/internal/jsondur"
	"github.com/caddyserver/caddy/v2"
)

// TestJSONProvisionConfigGetsTheCaddyfileChecks: a JSON config is refused
// for the same provision mistakes as a Caddyfile, with the same words
// (the checks live in lifecycle, not in the Caddyfile parser).
func TestJSONProvisionConfigGetsTheCaddyfileChecks(t *testing.T) {
	t.Setenv("K", "key")
	provision := func(p string) string {
		return `{"api_key":"{env.K}","pools":{"llm":{"provision":{"image":"i",` + p + `}}}}`
	}
	cases := []struct{ name, vastai, want string }{
		{"unknown filter operator", provision(`"offer":{"extra":{"inet_down":{">=":5}}}`), `operator ">="`},
		{"WEB_PASSWORD", provision(`"env":{"WEB_PASSWORD":"p"}`), "WEB_PASSWORD is generated"},
		{"web_password in another case", provision(`"env":{"web_password":"p"}`), "WEB_PASSWORD is generated"},
		{"min above max", provision(`"min_instances":3,"max_instances":2`), "min_instances 3 is above max_instances 2"},
		{"reliability above 1", provision(`"offer":{"min_reliability":98}`), "min_reliability: 98 is above 1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var cfg caddy.Config
			if err := json.Unmarshal([]byte(`{"admin":{"disabled":true},"apps":{"vastai":`+c.vastai+`}}`), &cfg); err != nil {
				t.Fatalf("test config: %v", err)
			}
			err := caddy.Validate(&cfg)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v; want one mentioning %q", err, c.want)
			}
		})
	}
}

// everyFieldSet fails the test if a field of v is zero: a field added to a
// config type later must be added to the conversion test too.
func everyFieldSet(t *testing.T, v any) {
	t.Helper()
	rv := reflect.ValueOf(v)
	for i := 0; i < rv.NumField(); i++ {
		if rv.Field(i).IsZero() {
			t.Fatalf("%s.%s is not set in this test", rv.Type().Name(), rv.Type().Field(i).Name)
		}
	}
}

// TestProvisionConfigLoadsEveryFieldIntoTheTemplate: a JSON provision
// block with every field loads the same whether its durations are written
// as "1h" or as nanoseconds, the template carries every field (the offer
// and the port mapping included), and the config encodes back to what
// the template encodes to, apart from that mapping.
func TestProvisionConfigLoadsEveryFieldIntoTheTemplate(t *testing.T) {
	const fields = `"image": "img", "template_hash_id": "hash", "disk": 20, "env": {"A": "b"},
		"onstart": "run", "args": ["--x"], "runtype": "args", "offer": {"gpu_name": "RTX 4090"},
		"order": [["dph_total", "asc"]], "type": "bid", "bid_price": 0.2, "min_instances": 1,
		"max_instances": 2, "max_price_per_hour": 0.5, "max_attempts": 4, "max_spend_per_hour": 3`
	var loaded []ProvisionConfig
	for _, durations := range []string{
		`"max_lifetime": "1h", "ready_timeout": "1m"`,
		`"max_lifetime": 3600000000000, "ready_timeout": 60000000000`,
		`"max_lifetime": "0.5h30m", "ready_timeout": 60000000000`,
	} {
		var p ProvisionConfig
		if err := json.Unmarshal([]byte("{"+fields+", "+durations+"}"), &p); err != nil {
			t.Fatalf("%s: %v", durations, err)
		}
		if p.MaxLifetime.D() != time.Hour || p.ReadyTimeout.D() != time.Minute {
			t.Errorf("%s: max_lifetime %v, ready_timeout %v; want 1h, 1m", durations, p.MaxLifetime, p.ReadyTimeout)
		}
		loaded = append(loaded, p)
	}
	for _, p := range loaded[1:] {
		if !reflect.DeepEqual(p, loaded[0]) {
			t.Errorf("loaded %+v\nwant   %+v", p, loaded[0])
		}
	}
	p := loaded[0]
	tpl := p.template(9000, caddy.NewReplacer())
	// Autoscale comes from the pool's autoscale block (lifecycleConfig),
	// not from provision: TestAutoscaleBlockLoadsIntoTheSpec checks it.
	tpl.Autoscale.Enabled = true
	everyFieldSet(t, tpl)
	if tpl.Env["-p 9000:9000"] != "1" {
		t.Errorf("env %v lacks the engine port mapping", tpl.Env)
	}
	if _, ok := p.Env["-p 9000:9000"]; ok {
		t.Errorf("template() wrote the port mapping into the config's env %v", p.Env)
	}
	delete(tpl.Env, "-p 9000:9000")
	asMap := func(v any) map[string]any {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	if got, want := asMap(tpl), asMap(p); !reflect.DeepEqual(got, want) {
		t.Errorf("template = %v\nwant        %v", got, want)
	}
	// Without an offer, Caddy writes the config back without one.
	var bare ProvisionConfig
	if err := json.Unmarshal([]byte(`{"image": "x"}`), &bare); err != nil {
		t.Fatal(err)
	}
	if b, _ := json.Marshal(bare); !strings.Contains(string(b), `"image":"x"`) || strings.Contains(string(b), "offer") {
		t.Errorf("bare config encodes as %s", b)
	}
}

// TestHealthConfigLoadsEveryFieldIntoTheSpec: the health block's JSON is
// fleet.HealthSpec's, and durations load the same as strings and as
// nanoseconds (what caddy.Duration accepts).
func TestHealthConfigLoadsEveryFieldIntoTheSpec(t *testing.T) {
	want := fleet.HealthSpec{
		Path: "/v1/models", Method: "POST", Body: "{}", Expect: []int{200, 204},
		Interval: jsondur.Duration(time.Second), Timeout: jsondur.Duration(2 * time.Second),
		HealthyThreshold: 3, UnhealthyThreshold: 4, Grace: jsondur.Duration(time.Hour),
	}
	for _, raw := range []string{
		`{"path":"/v1/models","method":"POST","body":"{}","expect":[200,204],"interval":"1s","timeout":"2s","healthy_threshold":3,"unhealthy_threshold":4,"grace":"1h"}`,
		`{"path":"/v1/models","method":"POST","body":"{}","expect":[200,204],"interval":1000000000,"timeout":2000000000,"healthy_threshold":3,"unhealthy_threshold":4,"grace":3600000000000}`,
	} {
		var h HealthConfig
		if err := json.Unmarshal([]byte(raw), &h); err != nil {
			t.Fatalf("%s: %v", raw, err)
		}
		if got := h.spec(); !reflect.DeepEqual(got, want) {
			t.Errorf("%s loads as %+v, want %+v", raw, got, want)
		}
		b, err := json.Marshal(h)
		if err != nil {
			t.Fatal(err)
		}
		const encoded = `{"path":"/v1/models","method":"POST","body":"{}","expect":[200,204],"interval":1000000000,"timeout":2000000000,"healthy_threshold":3,"unhealthy_threshold":4,"grace":3600000000000}`
		if string(b) != encoded {
			t.Errorf("encodes as %s, want %s", b, encoded)
		}
	}
	if (*HealthConfig)(nil).spec().Path != "" {
		t.Error("an absent health block is not the zero spec")
	}
}

// TestRoutingConfigErrorsNameTheField: the engines block and the vastai
// selection policies refuse bad JSON values at load time, naming the
// field.
func TestRoutingConfigErrorsNameTheField(t *testing.T) {
	t.Setenv("K", "key")
	app := func(engines string) string {
		return `"vastai":{"api_key":"{env.K}","pools":{"llm":{}}` + engines + `}`
	}
	site := func(policy string) string {
		return `,"http":{"servers":{"s":{"listen":["127.0.0.1:0"],"routes":[{"handle":[{"handler":"reverse_proxy",` +
			`"dynamic_upstreams":{"source":"vastai","pool":"llm"},"load_balancing":{"selection_policy":` + policy + `}}]}]}}}`
	}
	cases := []struct{ name, apps, want string }{
		{"stale_after below the interval", app(`,"engines":{"scrape_interval":"3s","stale_after":"2s"}`), "stale_after (2s) must exceed scrape_interval (3s)"},
		{"interval too short", app(`,"engines":{"scrape_interval":"10ms"}`), "scrape_interval: 10ms is below the minimum"},
		{"relative metrics path", app(`,"engines":{"metrics_path":"metrics"}`), `metrics_path: "metrics" must start with /`},
		{"unknown capacity", app("") + site(`{"policy":"vastai_least_load","capacity":"vram"}`), `capacity: "vram" is not throughput, gpus or none`},
		{"session factor below 1", app("") + site(`{"policy":"vastai_least_load","session_load_factor":0.5}`), "session_load_factor: 0.5 is below 1"},
		{"threshold above 1", app("") + site(`{"policy":"vastai_cache_aware","cache_threshold":1.5}`), "cache_threshold: 1.5 is above 1"},
		{"balance_rel below 1", app("") + site(`{"policy":"vastai_cache_aware","balance_rel":0.5}`), "balance_rel: 0.5 is below 1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var cfg caddy.Config
			if err := json.Unmarshal([]byte(`{"admin":{"disabled":true},"apps":{`+c.apps+`}}`), &cfg); err != nil {
				t.Fatalf("test config: %v", err)
			}
			err := caddy.Validate(&cfg)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v; want one mentioning %q", err, c.want)
			}
		})
	}
}

// TestAutoscaleConfigMistakesNameTheField: each mistake in an autoscale
// block is refused when the config is loaded, naming the JSON field.
func TestAutoscaleConfigMistakesNameTheField(t *testing.T) {
	t.Setenv("K", "key")
	pool := func(provision, autoscale string) string {
		p := `{"api_key":"{env.K}","pools":{"llm":{`
		if provision != "-" {
			p += `"provision":{"image":"i"` + provision + `},`
		}
		return p + `"autoscale":{` + autoscale + `}}}}`
	}
	cases := []struct{ name, vastai, want string }{
		{"no provision", pool("-", `"max":2`), "pools.llm.autoscale: needs a provision block"},
		{"no max", pool(`,"max_instances":3`, `"min":0`), "pools.llm.autoscale.max: is required"},
		{"max below min", pool(``, `"min":3,"max":2`), "pools.llm.autoscale.max: (2) must be at least min (3)"},
		{"negative min", pool(``, `"min":-1,"max":2`), "pools.llm.autoscale.min: must not be negative"},
		{"max above max_instances", pool(`,"max_instances":2`, `"max":3`), "pools.llm.autoscale.max: (3) exceeds provision max_instances (2)"},
		{"min_instances with autoscale", pool(`,"min_instances":1`, `"max":2`), "pools.llm.provision.min_instances: not used with autoscale"},
		{"panic threshold below 1", pool(``, `"max":2,"panic_threshold":0.5`), "pools.llm.autoscale.panic_threshold: must be at least 1"},
		{"negative duration", pool(``, `"max":2,"idle_to_zero":-1`), "pools.llm.autoscale.idle_to_zero: must not be negative"},
		{"panic window above stable", pool(``, `"max":2,"stable_window":"2s","panic_window":"5s"`), "pools.llm.autoscale.stable_window: (2s) must be at least panic_window (5s)"},
		{"tiny decision interval", pool(``, `"max":2,"decision_interval":"1ms"`), "pools.llm.autoscale.decision_interval: 1ms is below the minimum"},
		{"empty warm pool", pool(``, `"max":2,"warm":{}`), "pools.llm.autoscale.warm.stopped: must be at least 1"},
		{"negative warm age", pool(``, `"max":2,"warm":{"stopped":1,"max_stopped_age":-5}`), "pools.llm.autoscale.warm.max_stopped_age: must not be negative"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var cfg caddy.Config
			if err := json.Unmarshal([]byte(`{"admin":{"disabled":true},"apps":{"vastai":`+c.vastai+`}}`), &cfg); err != nil {
				t.Fatalf("test config: %v", err)
			}
			err := caddy.Validate(&cfg)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v; want one mentioning %q", err, c.want)
			}
		})
	}
}

// TestAutoscaleBlockLoadsIntoTheSpec: the autoscale block reaches the
// lifecycle manager's template (drain and warm pool) and the Decider's
// config, every field, defaults filled in.
func TestAutoscaleBlockLoadsIntoTheSpec(t *testing.T) {
	var c AutoscaleConfig
	raw := `{"min":1,"max":4,"target_load":6,"decision_interval":"2s","stable_window":"30s","panic_window":"3s",
		"panic_threshold":1.5,"scale_up_delay":"10s","scale_down_delay":"5m","idle_to_zero":"20m","drain_timeout":"1m",
		"max_pending":10,"max_wait":"20s","warm":{"stopped":2,"start_timeout":"45s","max_stopped_age":"3d"}}`
	if err := json.Unmarshal([]byte(raw), &c); err != nil {
		t.Fatal(err)
	}
	spec := c.spec()
	everyFieldSet(t, spec)
	everyFieldSet(t, spec.Warm)
	if spec.DrainTimeout != time.Minute || spec.Warm.MaxStoppedAge != 72*time.Hour || spec.Warm.StartTimeout != 45*time.Second {
		t.Errorf("spec %+v", spec)
	}
	sc := c.scaler()
	everyFieldSet(t, sc.decider)
	if sc.decider.ScaleDownDelay != 5*time.Minute || sc.decider.Bucket != 500*time.Millisecond || sc.pending != 10 ||
		sc.maxWait != 20*time.Second || sc.interval != 2*time.Second {
		t.Errorf("scaler %+v", sc)
	}
	// Defaults: the reference's (60s/6s at 2x, 30s up, 10m down, 15m to zero).
	d := (&AutoscaleConfig{Max: 2}).scaler()
	if d.decider.StableWindow != time.Minute || d.decider.PanicWindow != 6*time.Second || d.decider.Bucket != time.Second ||
		d.decider.IdleToZero != 15*time.Minute || d.interval != DefaultDecisionInterval || d.pending != 64 || d.maxWait != time.Minute {
		t.Errorf("defaults %+v", d)
	}
}
