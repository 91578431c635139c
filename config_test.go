package vastai

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-vastai/caddy-vastai/lifecycle"
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

// TestProvisionConfigCarriesEveryFieldToTheTemplate: ProvisionConfig (the
// JSON, with Caddy durations) and lifecycle.PoolTemplate (the engine's)
// describe the same fields; the conversion must carry each one, so the
// two JSON forms are the same apart from the port mapping it adds.
func TestProvisionConfigCarriesEveryFieldToTheTemplate(t *testing.T) {
	p := ProvisionConfig{
		Image: "img", TemplateHashID: "hash", Disk: 20, Env: map[string]string{"A": "b"}, Onstart: "run",
		Args: []string{"--x"}, Runtype: "args", Offer: &lifecycle.OfferFilter{GPUName: "RTX 4090"},
		Order: [][2]string{{"dph_total", "asc"}}, Type: lifecycle.TypeBid, BidPrice: 0.2,
		MinInstances: 1, MaxInstances: 2, MaxPricePerHour: 0.5, MaxLifetime: caddy.Duration(time.Hour),
		ReadyTimeout: caddy.Duration(time.Minute), MaxAttempts: 4, MaxSpendPerHour: 3,
	}
	everyFieldSet(t, p)
	tpl := p.template(9000, caddy.NewReplacer())
	if tpl.Env["-p 9000:9000"] != "1" {
		t.Errorf("env %v lacks the engine port mapping", tpl.Env)
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
}

// TestHealthConfigCarriesEveryFieldToTheSpec: the same for HealthConfig
// and fleet.HealthSpec, field by field.
func TestHealthConfigCarriesEveryFieldToTheSpec(t *testing.T) {
	h := HealthConfig{
		Path: "/v1/models", Method: "POST", Body: "{}", Expect: []int{200, 204},
		Interval: caddy.Duration(time.Second), Timeout: caddy.Duration(2 * time.Second),
		HealthyThreshold: 3, UnhealthyThreshold: 4, Grace: caddy.Duration(time.Hour),
	}
	everyFieldSet(t, h)
	spec := reflect.ValueOf(h.spec())
	rh := reflect.ValueOf(h)
	for i := 0; i < rh.NumField(); i++ {
		name := rh.Type().Field(i).Name
		sf := spec.FieldByName(name)
		if !sf.IsValid() {
			t.Errorf("fleet.HealthSpec has no field %s", name)
			continue
		}
		want := rh.Field(i)
		if want.Type() != sf.Type() {
			want = want.Convert(sf.Type())
		}
		if !reflect.DeepEqual(sf.Interface(), want.Interface()) {
			t.Errorf("%s = %v, want %v", name, sf.Interface(), want.Interface())
		}
	}
}
