package vastclient

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// Secrets that vast.ai echoes back: instance tokens and env values. The
// registered ones are known to the client through AddSecrets (a generated
// WEB_PASSWORD, a provision env value); the others are only recognisable
// by the field that carries them.
const (
	secJupyter     = "jt0f1e2d3c4b5a69788796a5b4c3d2e1f0aabbccddeeff00112233445566778899"
	secInstanceKey = "ik9d15a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f"
	secEnvValue    = "hf_UnregisteredEnvValue0123456789"
	secExtraEnv    = "xe-UnregisteredExtraEnvValue-42"
	secWebPassword = "wp-GeneratedWebPassword-7f3a9c"
	secHFToken     = "hf_RegisteredProvisionToken987654"
)

var allSecrets = []string{secJupyter, secInstanceKey, secEnvValue, secExtraEnv, secWebPassword, secHFToken, testKey}

// secretPayloads are answers full of secrets in every shape vast.ai uses.
var secretPayloads = []struct {
	name   string
	status int
	ctype  string
	body   string
}{
	{"json error with echoed fields", 400, "application/json", `{"success":false,"error":"invalid_args","msg":"bad request",` +
		`"jupyter_token":"` + secJupyter + `","instance_api_key":"` + secInstanceKey + `",` +
		`"env":{"HF_TOKEN":"` + secEnvValue + `","WEB_PASSWORD":"` + secWebPassword + `"},` +
		`"extra_env":[["X","` + secExtraEnv + `"],["HF","` + secHFToken + `"]]}`},
	{"secrets inside msg", 400, "application/json", `{"success":false,"error":"invalid_args","msg":"env {'HF_TOKEN': '` + secEnvValue +
		`'} rejected; jupyter_token=` + secJupyter + ` extra_env=[[\"X\", \"` + secExtraEnv + `\"]] instance_api_key: \"` + secInstanceKey +
		`\" password ` + secWebPassword + ` token ` + secHFToken + `"}`},
	{"fastapi detail list", 422, "application/json", `{"detail":[{"loc":["body","env","HF_TOKEN"],"msg":"too long","input":"` + secHFToken +
		`"},{"loc":["body","env"],"input":{"jupyter_token":"` + secJupyter + `","WEB_PASSWORD":"` + secWebPassword + `"}}]}`},
	{"plain text 5xx", 500, "text/plain", `Internal error: jupyter_token=` + secJupyter + ` extra_env=[["X","` + secExtraEnv + `"]] env={"HF_TOKEN": "` +
		secEnvValue + `"} instance_api_key='` + secInstanceKey + `' WEB_PASSWORD=` + secWebPassword},
	{"truncated json 5xx", 502, "application/json", `{"error":"server_error","instance_api_key":"` + secInstanceKey + `","env":{"A":"` + secEnvValue +
		`","B":"` + secHFToken + `"},"extra_env":[["X","` + secExtraEnv + `"],["Y","` + secWebPassword + `"],["Z","` + secJupyter},
	{"2xx success false with the instance", 200, "application/json", `{"success":false,"error":"failed","msg":"could not","instances":{"id":7,` +
		`"jupyter_token":"` + secJupyter + `","extra_env":[["WEB_PASSWORD","` + secWebPassword + `"],["X","` + secExtraEnv + `"]],"env":{"HF":"` +
		secEnvValue + `"},"instance_api_key":"` + secInstanceKey + `","note":"` + secHFToken + `"}}`},
	{"2xx undecodable", 200, "application/json", `{"instances_x":[{"id":7,"jupyter_token":"` + secJupyter + `","extra_env":[["X","` +
		secExtraEnv + `"]],"note":"` + secWebPassword + ` ` + secHFToken + ` ` + secEnvValue + ` ` + secInstanceKey + `"}]}`},
	{"2xx truncated", 200, "application/json", `{"instances":{"id":7,"jupyter_token":"` + secJupyter + `","extra_env":[["X","` + secExtraEnv +
		`"]],"note":"` + secWebPassword + ` ` + secHFToken + ` ` + secEnvValue + ` ` + secInstanceKey},
	{"2xx wrong instance", 200, "application/json", `{"success":true,"new_contract":"x","instances":{"id":999,"jupyter_token":"` + secJupyter +
		`","extra_env":[["X","` + secExtraEnv + `"]],"label":"` + secWebPassword + ` ` + secHFToken + ` ` + secEnvValue + ` ` + secInstanceKey + `"}}`},
	{"retried 503", 503, "text/html", `<html>jupyter_token: ` + secJupyter + ` ` + secWebPassword + ` ` + secHFToken + `</html>`},
}

// TestErrorsNeverCarryInstanceSecrets feeds answers full of secrets
// through every call and asserts that no secret reaches an error's text,
// an APIError field or a log line (debug included).
func TestErrorsNeverCarryInstanceSecrets(t *testing.T) {
	for _, p := range secretPayloads {
		t.Run(p.name, func(t *testing.T) {
			f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ []byte, _ int) {
				w.Header().Set("Content-Type", p.ctype)
				w.WriteHeader(p.status)
				_, _ = w.Write([]byte(p.body))
			})
			logger, logs := observedLogger()
			cfg := testConfig(f.URL)
			cfg.Logger = logger
			c := newTestClient(t, cfg)
			c.AddSecrets(secWebPassword, secHFToken)
			ctx := testCtx(t)
			calls := map[string]func(context.Context) error{
				"list": func(ctx context.Context) error { _, err := c.ListInstances(ctx, ListOptions{}); return err },
				"show": func(ctx context.Context) error { _, err := c.ShowInstance(ctx, 7); return err },
				"create": func(ctx context.Context) error {
					_, err := c.CreateInstance(ctx, 1, CreateRequest{Image: "i"})
					return err
				},
				"destroy": func(ctx context.Context) error { return c.DestroyInstance(ctx, 7) },
				"label":   func(ctx context.Context) error { return c.SetLabel(ctx, 7, "l") },
				"user":    func(ctx context.Context) error { _, err := c.CurrentUser(ctx); return err },
				"offers":  func(ctx context.Context) error { _, err := c.SearchOffers(ctx, OfferQuery{}); return err },
			}
			for name, call := range calls {
				err := call(ctx)
				if err == nil {
					// A 2xx answer may be acceptable to some endpoints
					// (destroy of a success:true body); nothing to leak.
					continue
				}
				texts := []string{err.Error(), fmt.Sprintf("%v", err), fmt.Sprintf("%+v", err)}
				var ae *APIError
				if errors.As(err, &ae) {
					texts = append(texts, ae.Body, ae.Msg, ae.Code, fmt.Sprintf("%+v", *ae))
					if p.status >= 200 && p.status <= 299 && ae.Body != "" {
						t.Errorf("%s: a 2xx body was excerpted: %q", name, ae.Body)
					}
				}
				for _, s := range texts {
					for _, sec := range allSecrets {
						if strings.Contains(s, sec) || strings.Contains(s, sec[:16]) {
							t.Errorf("%s: error leaks %.8s…: %s", name, sec, s)
						}
					}
				}
			}
			all := logs.String()
			for _, sec := range allSecrets {
				if strings.Contains(all, sec) || strings.Contains(all, sec[:16]) {
					t.Errorf("logs leak %.8s…: %s", sec, all)
				}
			}
		})
	}
}

// TestErrorsKeepTheirMeaningAfterScrubbing checks that scrubbing removes
// only secrets: the code, the message and harmless body parts remain.
func TestErrorsKeepTheirMeaningAfterScrubbing(t *testing.T) {
	e := parseAPIError("PUT", "/api/v0/asks/{offer_id}/", 400, []byte(secretPayloads[0].body), testKey)
	if e.Code != "invalid_args" || e.Msg != "bad request" {
		t.Errorf("code %q msg %q", e.Code, e.Msg)
	}
	for _, want := range []string{`"jupyter_token":"[REDACTED]"`, `"env":"[REDACTED]"`, `"extra_env":"[REDACTED]"`, `"instance_api_key":"[REDACTED]"`, `"error":"invalid_args"`} {
		if !strings.Contains(e.Body, want) {
			t.Errorf("Body %s lacks %s", e.Body, want)
		}
	}
	e = parseAPIError("GET", "/p", 500, []byte("boom jupyter_token="+secJupyter+" at line 3"), testKey)
	if e.Msg != "boom jupyter_token=[REDACTED] at line 3" {
		t.Errorf("Msg = %q", e.Msg)
	}
}

// FuzzErrorScrubbing surrounds secrets with arbitrary text: a registered
// secret never survives, and neither does the value of a sensitive field
// written after a separator.
func FuzzErrorScrubbing(f *testing.F) {
	for _, p := range secretPayloads {
		f.Add(p.body[:len(p.body)/2], p.body[len(p.body)/2:], uint8(0), 400)
	}
	f.Add(`{"detail":`, `}`, uint8(3), 422)
	f.Add("", "", uint8(5), 200)
	shapes := []string{
		`"jupyter_token":"%s"`, `'instance_api_key': '%s'`, `extra_env=[["X","%s"]]`, `"env": {"A": "%s"}`,
		`jupyter_token: %s`, `env={"A":"%s"`, `"extra_env":[["X","%s`, `instance_api_key=%s&x=1`,
	}
	f.Fuzz(func(t *testing.T, pre, post string, shape uint8, status int) {
		r := newRedactor(testKey)
		r.add(false, secWebPassword)
		field := fmt.Sprintf(shapes[int(shape)%len(shapes)], secJupyter)
		body := pre + " " + field + " " + secWebPassword + " " + post
		if status < 100 || status > 599 {
			status = 500
		}
		e := r.parseAPIError("GET", "/p", status, []byte(body))
		for _, s := range []string{e.Error(), e.Body, e.Msg, e.Code, r.text(body)} {
			if strings.Contains(s, secWebPassword) {
				t.Fatalf("registered secret survived in %q", s)
			}
			if strings.Contains(s, secJupyter) && !strings.Contains(pre+post, secJupyter) {
				t.Fatalf("field value survived in %q (body %q)", s, body)
			}
		}
	})
}

// TestCreateEnvValuesAreRedactedWithoutRegistration: a create's own env
// values (a generated WEB_PASSWORD, an HF_TOKEN) echoed in a plain-text
// error never come out, although nobody called AddSecrets.
func TestCreateEnvValuesAreRedactedWithoutRegistration(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ []byte, _ int) {
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte("rejected: HF_TOKEN=" + secHFToken + " WEB_PASSWORD " + secWebPassword))
	})
	logger, logs := observedLogger()
	cfg := testConfig(f.URL)
	cfg.Logger = logger
	c := newTestClient(t, cfg)
	_, err := c.CreateInstance(testCtx(t), 1, CreateRequest{Image: "i", Env: map[string]string{
		"HF_TOKEN": secHFToken, "WEB_PASSWORD": secWebPassword, "-p 8000:8000": "1",
	}})
	if err == nil {
		t.Fatal("create succeeded on a 400")
	}
	for _, sec := range []string{secHFToken, secWebPassword} {
		if strings.Contains(fmt.Sprintf("%+v", err), sec) || strings.Contains(logs.String(), sec) {
			t.Errorf("create env value %.8s… leaks: %v", sec, err)
		}
	}
}
