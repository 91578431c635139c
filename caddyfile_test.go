package vastai

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddytest"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

var updateGolden = flag.Bool("update", false, "rewrite the expected JSON of testdata/caddyfile_adapt/*.caddyfiletest (review the diff!)")

// TestCaddyfileAdapt runs the .caddyfiletest files: a Caddyfile, a line of
// dashes, then the expected JSON.
func TestCaddyfileAdapt(t *testing.T) {
	files, err := filepath.Glob("testdata/caddyfile_adapt/*.caddyfiletest")
	if err != nil || len(files) == 0 {
		t.Fatalf("no adapt test files: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			input, expected, ok := strings.Cut(string(data), "----------")
			if !ok {
				t.Fatalf("%s: missing ---------- separator", f)
			}
			if *updateGolden {
				out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), nil)
				if err != nil {
					t.Fatalf("adapt: %v", err)
				}
				var pretty bytes.Buffer
				if err := json.Indent(&pretty, out, "", "\t"); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(f, []byte(input+"----------\n"+pretty.String()+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			if !caddytest.CompareAdapt(t, f, input, "caddyfile", strings.TrimSpace(expected)) {
				t.Errorf("%s: adapted JSON differs (diff printed above)", f)
			}
		})
	}
}

// TestCaddyfileErrorsNameTheProblem checks that every malformed Caddyfile is
// refused with an error that names the option at fault.
func TestCaddyfileErrorsNameTheProblem(t *testing.T) {
	wrap := func(global, site string) string {
		return "{\n\tvastai {\n" + global + "\n\t}\n}\n:8080 {\n" + site + "\n}\n"
	}
	const okSite = "\tvastai_proxy llm"
	const okPool = "\t\tapi_key k\n\t\tpool llm {\n\t\t\tlabel_prefix llm-\n\t\t}"
	cases := []struct {
		name, caddyfile, want string
	}{
		{"unknown option", wrap("\t\tapi_keys k", okSite), `unrecognized vastai option "api_keys"`},
		{"api_key without value", wrap("\t\tapi_key", okSite), "api_key: missing value"},
		{"api_key with two values", wrap("\t\tapi_key a b", okSite), "api_key: too many arguments"},
		{"bad poll interval", wrap("\t\tapi_key k\n\t\tpoll_interval soon", okSite), "poll_interval"},
		{"zero poll interval", wrap("\t\tapi_key k\n\t\tpoll_interval 0s", okSite), "poll_interval: must be positive"},
		{"pool without name", wrap("\t\tapi_key k\n\t\tpool {\n\t\t}", okSite), "pool"},
		{"bad port", wrap("\t\tapi_key k\n\t\tpool llm {\n\t\t\tport 99999\n\t\t}", okSite), `pool "llm": port`},
		{"non-numeric port", wrap("\t\tapi_key k\n\t\tpool llm {\n\t\t\tport http\n\t\t}", okSite), `pool "llm": port`},
		{"unknown token source", wrap("\t\tapi_key k\n\t\tpool llm {\n\t\t\ttoken cookie\n\t\t}", okSite), `unknown token source "cookie"`},
		{"env token without name", wrap("\t\tapi_key k\n\t\tpool llm {\n\t\t\ttoken env\n\t\t}", okSite), "env needs exactly one variable name"},
		{"static token without value", wrap("\t\tapi_key k\n\t\tpool llm {\n\t\t\ttoken static\n\t\t}", okSite), "static needs exactly one value"},
		{"label and prefix", wrap("\t\tapi_key k\n\t\tpool llm {\n\t\t\tlabel a\n\t\t\tlabel_prefix b\n\t\t}", okSite), "mutually exclusive"},
		{"unknown pool option", wrap("\t\tapi_key k\n\t\tpool llm {\n\t\t\tlabels a\n\t\t}", okSite), `pool "llm": unrecognized option "labels"`},
		{"duplicate pool", wrap(okPool+"\n\t\tpool llm", okSite), `pool "llm" is defined more than once`},
		{"health bad path", wrap("\t\tapi_key k\n\t\tpool llm {\n\t\t\thealth {\n\t\t\t\tpath health\n\t\t\t}\n\t\t}", okSite), `health: path: "health" must start with /`},
		{"health bad body", wrap("\t\tapi_key k\n\t\tpool llm {\n\t\t\thealth {\n\t\t\t\tbody notjson\n\t\t\t}\n\t\t}", okSite), "health: body: not valid JSON"},
		{"health bad expect", wrap("\t\tapi_key k\n\t\tpool llm {\n\t\t\thealth {\n\t\t\t\texpect ok\n\t\t\t}\n\t\t}", okSite), `health: expect: "ok" is not an HTTP status code`},
		{"health bad interval", wrap("\t\tapi_key k\n\t\tpool llm {\n\t\t\thealth {\n\t\t\t\tinterval -1s\n\t\t\t}\n\t\t}", okSite), "health: interval"},
		{"health bad threshold", wrap("\t\tapi_key k\n\t\tpool llm {\n\t\t\thealth {\n\t\t\t\tunhealthy_threshold 0\n\t\t\t}\n\t\t}", okSite), "unhealthy_threshold"},
		{"health unknown option", wrap("\t\tapi_key k\n\t\tpool llm {\n\t\t\thealth {\n\t\t\t\tretries 3\n\t\t\t}\n\t\t}", okSite), `health: unrecognized option "retries"`},
		{"health twice", wrap("\t\tapi_key k\n\t\tpool llm {\n\t\t\thealth\n\t\t\thealth\n\t\t}", okSite), "health is defined more than once"},
		{"bad max_concurrent_probes", wrap("\t\tapi_key k\n\t\tmax_concurrent_probes lots", okSite), "max_concurrent_probes"},
		{"ssh without key", wrap("\t\tapi_key k\n\t\tssh {\n\t\t\tknown_hosts storage\n\t\t}", okSite), "ssh: key: at least one private key file is required"},
		{"ssh bad known_hosts", wrap("\t\tapi_key k\n\t\tssh {\n\t\t\tkey /k\n\t\t\tknown_hosts yolo\n\t\t}", okSite), `ssh: known_hosts: "yolo" is not storage or insecure`},
		{"ssh bad timeout", wrap("\t\tapi_key k\n\t\tssh {\n\t\t\tkey /k\n\t\t\tconnect_timeout never\n\t\t}", okSite), "ssh: connect_timeout"},
		{"ssh unknown option", wrap("\t\tapi_key k\n\t\tssh {\n\t\t\tkey /k\n\t\t\tuser ubuntu\n\t\t}", okSite), `ssh: unrecognized option "user"`},
		{"ssh twice", wrap("\t\tapi_key k\n\t\tssh {\n\t\t\tkey /k\n\t\t}\n\t\tssh {\n\t\t\tkey /k\n\t\t}", okSite), "ssh is defined more than once"},
		{"tunnel other than ssh", wrap(okPool, "\tvastai_proxy llm {\n\t\ttransport vastai {\n\t\t\ttunnel wireguard\n\t\t}\n\t}"), `tunnel: "wireguard" is not supported`},
		{"tunnel without kind", wrap(okPool, "\tvastai_proxy llm {\n\t\ttransport vastai {\n\t\t\ttunnel\n\t\t}\n\t}"), "tunnel: expected ssh"},
		{"provision without image", wrap("\t\tapi_key k\n\t\tpool llm {\n\t\t\tprovision {\n\t\t\t\tdisk 20\n\t\t\t}\n\t\t}", okSite), "provision: image: an image or a template_hash_id is required"},
		{"provision bad disk", wrap("\t\tapi_key k\n\t\tpool llm {\n\t\t\tprovision {\n\t\t\t\timage x\n\t\t\t\tdisk big\n\t\t\t}\n\t\t}", okSite), "disk: \"big\" is not a positive number"},
		{"provision env pair", wrap("\t\tapi_key k\n\t\tpool llm {\n\t\t\tprovision {\n\t\t\t\timage x\n\t\t\t\tenv ONLYKEY\n\t\t\t}\n\t\t}", okSite), "env: expected <KEY> <VALUE>"},
		{"provision web password", wrap("\t\tapi_key k\n\t\tpool llm {\n\t\t\tprovision {\n\t\t\t\timage x\n\t\t\t\tenv WEB_PASSWORD p\n\t\t\t}\n\t\t}", okSite), "WEB_PASSWORD is generated"},
		{"provision bad type", wrap("\t\tapi_key k\n\t\tpool llm {\n\t\t\tprovision {\n\t\t\t\timage x\n\t\t\t\ttype spot\n\t\t\t}\n\t\t}", okSite), "type: expected on-demand or bid <price>"},
		{"provision bad bid", wrap("\t\tapi_key k\n\t\tpool llm {\n\t\t\tprovision {\n\t\t\t\timage x\n\t\t\t\ttype bid free\n\t\t\t}\n\t\t}", okSite), "bid price \"free\""},
		{"provision bad order", wrap("\t\tapi_key k\n\t\tpool llm {\n\t\t\tprovision {\n\t\t\t\timage x\n\t\t\t\torder dph_total up\n\t\t\t}\n\t\t}", okSite), "order: expected <field> asc|desc"},
		{"provision min above max", wrap("\t\tapi_key k\n\t\tpool llm {\n\t\t\tprovision {\n\t\t\t\timage x\n\t\t\t\tmin_instances 3\n\t\t\t\tmax_instances 2\n\t\t\t}\n\t\t}", okSite), "min_instances 3 is above max_instances 2"},
		{"provision bad lifetime", wrap("\t\tapi_key k\n\t\tpool llm {\n\t\t\tprovision {\n\t\t\t\timage x\n\t\t\t\tmax_lifetime forever\n\t\t\t}\n\t\t}", okSite), "max_lifetime"},
		{"provision unknown option", wrap("\t\tapi_key k\n\t\tpool llm {\n\t\t\tprovision {\n\t\t\t\timage x\n\t\t\t\tgpus 2\n\t\t\t}\n\t\t}", okSite), "provision: unrecognized option \"gpus\""},
		{"offer bad reliability", wrap("\t\tapi_key k\n\t\tpool llm {\n\t\t\tprovision {\n\t\t\t\timage x\n\t\t\t\toffer {\n\t\t\t\t\tmin_reliability 98\n\t\t\t\t}\n\t\t\t}\n\t\t}", okSite), "min_reliability: 98 is above 1"},
		{"offer bad filter op", wrap("\t\tapi_key k\n\t\tpool llm {\n\t\t\tprovision {\n\t\t\t\timage x\n\t\t\t\toffer {\n\t\t\t\t\tfilter inet_down >= 5\n\t\t\t\t}\n\t\t\t}\n\t\t}", okSite), "operator \">=\""},
		{"offer unknown option", wrap("\t\tapi_key k\n\t\tpool llm {\n\t\t\tprovision {\n\t\t\t\timage x\n\t\t\t\toffer {\n\t\t\t\t\tvram 24\n\t\t\t\t}\n\t\t\t}\n\t\t}", okSite), "offer: unrecognized option \"vram\""},
		{"bad orphans", wrap("\t\tapi_key k\n\t\torphans keep", okSite), "orphans: \"keep\" is not adopt, destroy or ignore"},
		{"bad min_credit", wrap("\t\tapi_key k\n\t\tmin_credit -5", okSite), "min_credit"},
		{"vastai_proxy with two pools", wrap(okPool, "\tvastai_proxy llm other"), `unexpected argument "other"`},
		{"vastai_proxy with dynamic", wrap(okPool, "\tvastai_proxy llm {\n\t\tdynamic a example.com\n\t}"), "dynamic upstreams are preset"},
		{"vastai_proxy with to", wrap(okPool, "\tvastai_proxy llm {\n\t\tto localhost:1\n\t}"), "'to' is not allowed"},
		{"vastai_proxy with http transport", wrap(okPool, "\tvastai_proxy llm {\n\t\ttransport http\n\t}"), "transport must be vastai"},
		{"dynamic vastai without pool", wrap(okPool, "\treverse_proxy {\n\t\tdynamic vastai\n\t}"), "a pool name is required"},
		{"engines unknown option", wrap("\t\tapi_key k\n\t\tengines {\n\t\t\tinterval 1s\n\t\t}", okSite), `engines: unrecognized option "interval"`},
		{"engines bad interval", wrap("\t\tapi_key k\n\t\tengines {\n\t\t\tscrape_interval often\n\t\t}", okSite), "engines: scrape_interval: must be positive"},
		{"engines twice", wrap("\t\tapi_key k\n\t\tengines\n\t\tengines", okSite), "engines is defined more than once"},
		{"least_load unknown option", wrap(okPool, "\tvastai_proxy llm {\n\t\tlb_policy vastai_least_load {\n\t\t\tweights 1\n\t\t}\n\t}"), `vastai_least_load: unrecognized option "weights"`},
		{"least_load bad max_requests", wrap(okPool, "\tvastai_proxy llm {\n\t\tlb_policy vastai_least_load {\n\t\t\tmax_requests 0\n\t\t}\n\t}"), "max_requests"},
		{"cache_aware bad threshold", wrap(okPool, "\tvastai_proxy llm {\n\t\tlb_policy vastai_cache_aware {\n\t\t\tcache_threshold high\n\t\t}\n\t}"), `vastai_cache_aware: cache_threshold: "high" is not a number`},
		{"cache_aware bad max_body", wrap(okPool, "\tvastai_proxy llm {\n\t\tlb_policy vastai_cache_aware {\n\t\t\tmax_body lots\n\t\t}\n\t}"), `max_body: "lots" is not a size`},
		{"vastai_models with an argument", wrap(okPool, "\tvastai_models llm\n"+okSite), `vastai_models: unexpected argument "llm"`},
		{"vastai_models pools without names", wrap(okPool, "\tvastai_models {\n\t\tpools\n\t}\n"+okSite), "vastai_models: pools: at least one pool name is required"},
		{"vastai_models alias without pool", wrap(okPool, "\tvastai_models {\n\t\talias gpt-4o\n\t}\n"+okSite), "vastai_models: alias: expected <model> <pool>"},
		{"vastai_models alias twice", wrap(okPool, "\tvastai_models {\n\t\talias m llm\n\t\talias m llm\n\t}\n"+okSite), `vastai_models: alias: "m" is defined more than once`},
		{"vastai_models default without pool", wrap(okPool, "\tvastai_models {\n\t\tdefault\n\t}\n"+okSite), "vastai_models: default: expected one pool name"},
		{"vastai_models bad max_body", wrap(okPool, "\tvastai_models {\n\t\tmax_body lots\n\t}\n"+okSite), `vastai_models: max_body: "lots" is not a positive size`},
		{"vastai_models bad retry_after", wrap(okPool, "\tvastai_models {\n\t\tretry_after soon\n\t}\n"+okSite), "vastai_models: retry_after: must be positive"},
		{"vastai_models unknown option", wrap(okPool, "\tvastai_models {\n\t\tmodel m llm\n\t}\n"+okSite), `vastai_models: unrecognized option "model"`},
		{"dynamic vastai unknown option", wrap(okPool, "\treverse_proxy {\n\t\tdynamic vastai {\n\t\t\tpools llm\n\t\t}\n\t}"), `unrecognized vastai upstreams option "pools"`},
	}
	adapter := caddyconfig.GetAdapter("caddyfile")
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := adapter.Adapt([]byte(c.caddyfile), nil)
			if err == nil {
				t.Fatalf("adapted without error, want %q", c.want)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not mention %q", err, c.want)
			}
		})
	}
}

// TestConfigValidationNamesTheField provisions JSON configs (without
// starting anything) and checks the errors of the semantic checks.
func TestConfigValidationNamesTheField(t *testing.T) {
	t.Setenv("VASTAI_EMPTY_FOR_TEST", "")
	site := func(pool string) string {
		return `"http":{"servers":{"s":{"listen":[":0"],"routes":[{"handle":[{"handler":"reverse_proxy",
			"dynamic_upstreams":{"source":"vastai","pool":"` + pool + `"},"transport":{"protocol":"vastai"}}]}]}}}`
	}
	cases := []struct {
		name, vastai, http, want string
	}{
		{"missing api_key", `{"pools":{"llm":{}}}`, site("llm"), "api_key is required"},
		{"api_key placeholder resolving to nothing", `{"api_key":"{env.VASTAI_EMPTY_FOR_TEST}","pools":{"llm":{}}}`, site("llm"), "resolved to an empty value"},
		{"unknown pool named by an upstream", `{"api_key":"k","pools":{"llm":{}}}`, site("chat"), `unknown pool "chat" (configured pools: llm)`},
		{"bad port", `{"api_key":"k","pools":{"llm":{"port":70000}}}`, site("llm"), "port 70000 out of range"},
		{"unknown token source", `{"api_key":"k","pools":{"llm":{"token":{"source":"cookie"}}}}`, site("llm"), `unknown token source "cookie"`},
		{"env token without name", `{"api_key":"k","pools":{"llm":{"token":{"source":"env"}}}}`, site("llm"), "needs a variable name"},
		{"bad api_url", `{"api_key":"k","api_url":"console.vast.ai","pools":{"llm":{}}}`, site("llm"), "api_url"},
		{"poll_interval too small", `{"api_key":"k","poll_interval":1000,"pools":{"llm":{}}}`, site("llm"), "poll_interval"},
		{"label and prefix", `{"api_key":"k","pools":{"llm":{"label":"a","label_prefix":"b"}}}`, site("llm"), "mutually exclusive"},
		{"upstream without the app", ``, site("llm"), "vastai app is not configured"},
		{"bad gateway_id", `{"api_key":"k","gateway_id":"Prod EU","pools":{"llm":{}}}`, site("llm"), "gateway"},
		{"ssh without keys", `{"api_key":"k","ssh":{},"pools":{"llm":{}}}`, site("llm"), "ssh: key"},
		{"ssh key file missing", `{"api_key":"k","ssh":{"keys":["/nonexistent/key"]},"pools":{"llm":{}}}`, site("llm"), "/nonexistent/key"},
		{"tunnel without ssh", `{"api_key":"k","pools":{"llm":{}}}`, strings.Replace(site("llm"), `"protocol":"vastai"`, `"protocol":"vastai","tunnel":"ssh"`, 1), "tunnel ssh needs SSH access"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			apps := `{` + c.http + `}`
			if c.vastai != "" {
				apps = `{"vastai":` + c.vastai + `,` + c.http + `}`
			}
			var cfg caddy.Config
			if err := json.Unmarshal([]byte(`{"admin":{"disabled":true},"apps":`+apps+`}`), &cfg); err != nil {
				t.Fatalf("test config: %v", err)
			}
			err := caddy.Validate(&cfg)
			if err == nil {
				t.Fatalf("valid, want an error mentioning %q", c.want)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not mention %q", err, c.want)
			}
			if strings.Contains(err.Error(), `"k"`) {
				t.Errorf("error reveals the api key: %q", err)
			}
		})
	}
}

// TestConfigErrorsSayWhatWentWrongOnce checks whole messages: Caddy already
// names the module ("vastai: invalid configuration: "), so the app's own
// errors must not repeat it or the field.
func TestConfigErrorsSayWhatWentWrongOnce(t *testing.T) {
	t.Setenv("VASTAI_EMPTY_FOR_TEST", "")
	const prefix = "loading vastai app module: vastai: invalid configuration: "
	cases := []struct{ vastai, want string }{
		{`{}`, "api_key is required"},
		{`{"api_key":"{env.VASTAI_EMPTY_FOR_TEST}"}`, `api_key is required: "{env.VASTAI_EMPTY_FOR_TEST}" resolved to an empty value`},
		{`{"api_key":"{env.K}","poll_interval":1000}`, "poll_interval: 1µs is below the minimum of 500ms"},
		{`{"api_key":"{env.K}","gateway_id":"Prod EU"}`, `gateway_id "Prod EU" must match [a-z0-9-]{1,32}`},
		{`{"api_key":"{env.K}","pools":{"llm":{"port":70000}}}`, `pool "llm": port 70000 out of range 1-65535`},
		{`{"api_key":"{env.K}","ssh":{},"pools":{"llm":{}}}`, "ssh: key: at least one private key file is required"},
	}
	t.Setenv("K", "key")
	for _, c := range cases {
		var cfg caddy.Config
		if err := json.Unmarshal([]byte(`{"admin":{"disabled":true},"apps":{"vastai":`+c.vastai+`}}`), &cfg); err != nil {
			t.Fatalf("test config: %v", err)
		}
		err := caddy.Validate(&cfg)
		if err == nil || err.Error() != prefix+c.want {
			t.Errorf("%s:\n got %v\nwant %s", c.vastai, err, prefix+c.want)
		}
	}
}

// TestLiteralSecretsCanBeRefused: with refuse_literal_secrets, a literal
// secret fails the load, naming the field; placeholders pass.
func TestLiteralSecretsCanBeRefused(t *testing.T) {
	t.Setenv("K", "key")
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("tok-from-file"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct{ vastai, want string }{
		{`{"refuse_literal_secrets":true,"api_key":"sk-literal"}`, "api_key: a literal secret"},
		{`{"refuse_literal_secrets":true,"api_key":"{env.K}","pools":{"p":{"token":{"source":"static","value":"tok"}}}}`, "pools.p.token.value: a literal secret"},
		{`{"refuse_literal_secrets":true,"api_key":"{env.K}","pools":{"p":{"provision":{"image":"i","env":{"HF_TOKEN":"hf_x"}}}}}`, "pools.p.provision.env.HF_TOKEN: a literal secret"},
		{`{"refuse_literal_secrets":true,"api_key":"{env.K}","pools":{"p":{"token":{"source":"static","value":"{file.` + tokenFile + `}"},"provision":{"image":"i","env":{"HF_TOKEN":"{env.K}","-p 9000:9000":"1"}}}}}`, ""},
	}
	for _, c := range cases {
		var cfg caddy.Config
		if err := json.Unmarshal([]byte(`{"admin":{"disabled":true},"apps":{"vastai":`+c.vastai+`}}`), &cfg); err != nil {
			t.Fatalf("test config: %v", err)
		}
		err := caddy.Validate(&cfg)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v; want it accepted", c.vastai, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %v; want an error mentioning %q", c.vastai, err, c.want)
		}
		if err != nil && (strings.Contains(err.Error(), "sk-literal") || strings.Contains(err.Error(), "hf_x") || strings.Contains(err.Error(), `"tok"`)) {
			t.Errorf("the error reveals the secret: %v", err)
		}
	}
}

func TestRefuseLiteralSecretsCaddyfileOption(t *testing.T) {
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte("{\n\tvastai {\n\t\tapi_key {env.K}\n\t\trefuse_literal_secrets\n\t}\n}\n"), nil)
	if err != nil || !bytes.Contains(out, []byte(`"refuse_literal_secrets":true`)) {
		t.Fatalf("adapt: %v\n%s", err, out)
	}
	if _, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte("{\n\tvastai {\n\t\trefuse_literal_secrets yes\n\t}\n}\n"), nil); err == nil || !strings.Contains(err.Error(), "refuse_literal_secrets: takes no argument") {
		t.Fatalf("an argument: %v", err)
	}
}

// TestTransportCaddyfileHandsOtherOptionsOn checks that transport vastai
// takes out only its own tunnel option, wherever it stands, and hands every
// other option (nested blocks included) to the http transport unchanged.
func TestTransportCaddyfileHandsOtherOptionsOn(t *testing.T) {
	const pool = "\t\ttls_trust_pool file {\n\t\t\tpem_file a.pem\n\t\t}\n"
	cases := []struct {
		name, body, httpBody, tunnel string
	}{
		{"no block", "", "", ""},
		{"empty block", " {\n}", "", ""},
		{"tunnel only", " {\n\ttunnel ssh\n}", "", "ssh"},
		{"tunnel first", " {\n\ttunnel ssh\n\tdial_timeout 3s\n" + pool + "}", " {\n\tdial_timeout 3s\n" + pool + "}", "ssh"},
		{"tunnel after a nested block", " {\n\tdial_timeout 3s\n" + pool + "\ttunnel ssh\n\tkeepalive_idle_conns 7\n}", " {\n\tdial_timeout 3s\n" + pool + "\tkeepalive_idle_conns 7\n}", "ssh"},
		{"no tunnel", " {\n\tread_buffer 8KiB\n" + pool + "}", " {\n\tread_buffer 8KiB\n" + pool + "}", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var got Transport
			if err := got.UnmarshalCaddyfile(caddyfile.NewTestDispenser("vastai" + c.body)); err != nil {
				t.Fatalf("transport vastai: %v", err)
			}
			want := new(reverseproxy.HTTPTransport)
			if err := want.UnmarshalCaddyfile(caddyfile.NewTestDispenser("http" + c.httpBody)); err != nil {
				t.Fatalf("transport http: %v", err)
			}
			if got.Tunnel != c.tunnel {
				t.Errorf("tunnel = %q, want %q", got.Tunnel, c.tunnel)
			}
			gotJSON, _ := json.Marshal(got.HTTPTransport)
			wantJSON, _ := json.Marshal(want)
			if !bytes.Equal(gotJSON, wantJSON) {
				t.Errorf("http transport options differ:\n got %s\nwant %s", gotJSON, wantJSON)
			}
		})
	}
}
