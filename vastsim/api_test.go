package vastsim

import (
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

var hex64 = regexp.MustCompile(`^[0-9a-f]{64}$`)

func TestAuth(t *testing.T) {
	authBody := `{"success":false,"error":"auth_error","msg":"Invalid user key"}`
	tests := []struct {
		name       string
		opts       Options
		key        string
		wantStatus int
		wantBody   string
	}{
		{"right key", Options{APIKey: testKey}, testKey, 200, ""},
		{"wrong key", Options{APIKey: testKey}, "nope", 401, authBody},
		{"missing key", Options{APIKey: testKey}, "", 401, authBody},
		{"observed 404 quirk", Options{APIKey: testKey, AuthErrorStatus: 404}, "nope", 404, authBody},
		{"any key accepted when unset", Options{}, "whatever", 200, ""},
		{"empty bearer rejected when unset", Options{}, "", 401, authBody},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, c := startSim(t, tc.opts)
			c.key = tc.key
			r := c.do("GET", "/api/v1/instances/", nil)
			if r.status != tc.wantStatus {
				t.Fatalf("status %d, want %d: %s", r.status, tc.wantStatus, r.body)
			}
			if tc.wantBody != "" {
				jsonEq(t, r.body, tc.wantBody)
			}
		})
	}
	t.Run("api_key query parameter is not enough", func(t *testing.T) {
		_, c := startSim(t, Options{APIKey: testKey})
		c.key = ""
		if r := c.do("GET", "/api/v1/instances/?api_key="+testKey, nil); r.status != 401 {
			t.Fatalf("status %d", r.status)
		}
	})
}

func TestV0ListIsGone(t *testing.T) {
	s, c := startSim(t, fastOpts())
	launch(t, s, LaunchSpec{Running: true})
	want := `{"success":false,"error":"deprecated_endpoint","msg":"/api/v0/instances/ is deprecated. Use /api/v1/instances/ instead."}`
	for _, q := range []string{"", "?owner=me", "?owner=me&api_key=x"} {
		r := c.do("GET", "/api/v0/instances/"+q, nil)
		if r.status != 410 {
			t.Fatalf("%q: status %d", q, r.status)
		}
		jsonEq(t, r.body, want)
	}
	calls := s.APICalls()
	last := calls[len(calls)-1]
	if last.Route != "GET /api/v0/instances/" || last.Status != 410 || last.Query != "owner=me&api_key=x" {
		t.Fatalf("call log: %+v", last)
	}
}

func TestShowInstance(t *testing.T) {
	s, c := startSim(t, fastOpts())
	id := launch(t, s, LaunchSpec{Label: "llm-a", Running: true, Env: map[string]string{"WEB_PASSWORD": "pw"}})
	info := s.info(t, id)

	r := c.do("GET", fmt.Sprintf("/api/v0/instances/%d/?owner=me", id), nil)
	if r.status != 200 {
		t.Fatalf("status %d", r.status)
	}
	in, ok := r.obj(t)["instances"].(map[string]any)
	if !ok {
		t.Fatalf("instances is not an object: %s", r.body)
	}
	if inum(t, in["id"]) != id || in["actual_status"] != "running" || in["label"] != "llm-a" {
		t.Fatalf("unexpected instance: %v", in)
	}
	if tok, _ := in["jupyter_token"].(string); !hex64.MatchString(tok) || tok != info.JupyterToken {
		t.Fatalf("jupyter_token %q", in["jupyter_token"])
	}
	if in["public_ipaddr"] != "127.0.0.1" || !strings.HasSuffix(in["local_ipaddrs"].(string), " \n") {
		t.Fatalf("addresses: %v %q", in["public_ipaddr"], in["local_ipaddrs"])
	}
	if in["gpu_util"] != nil || in["gpu_temp"] != nil {
		t.Fatal("gpu_util/gpu_temp should be null")
	}
	ports := in["ports"].(map[string]any)["8000/tcp"].([]any)
	_, hp, _ := net.SplitHostPort(info.EngineAddr)
	if len(ports) != 2 {
		t.Fatalf("want dual-stack bindings, got %v", ports)
	}
	for i, ip := range []string{"0.0.0.0", "::"} {
		b := ports[i].(map[string]any)
		if b["HostIp"] != ip || b["HostPort"] != hp {
			t.Fatalf("binding %d = %v, want %s:%s (HostPort a string)", i, b, ip, hp)
		}
	}
	if inum(t, in["direct_port_start"]) <= 0 {
		t.Fatal("direct_port_start should be set once running")
	}
	env := in["extra_env"].([]any)
	if len(env) != 2 || fmt.Sprint(env[0]) != "[WEB_PASSWORD pw]" || fmt.Sprint(env[1]) != "[-p 8000:8000 1]" {
		t.Fatalf("extra_env %v", env)
	}
	dur, end := num(t, in["duration"]), num(t, in["end_date"])
	if rem := end - float64(time.Now().Unix()); dur < rem-5 || dur > rem+5 {
		t.Fatalf("duration %v is not the time remaining until end_date (%v)", dur, rem)
	}
	if num(t, in["start_date"]) > float64(time.Now().Unix()+1) {
		t.Fatal("start_date in the future")
	}
	search := in["search"].(map[string]any)
	inst := in["instance"].(map[string]any)
	if num(t, search["totalHour"]) != num(t, in["dph_total"]) || num(t, inst["totalHour"]) != num(t, in["storage_total_cost"]) {
		t.Fatalf("cost blocks: search %v instance %v", search, inst)
	}

	for _, path := range []string{"/api/v0/instances/123/", "/api/v0/instances/abc/"} {
		r := c.do("GET", path, nil)
		if r.status != 200 {
			t.Fatalf("%s: status %d", path, r.status)
		}
		jsonEq(t, r.body, `{"instances": null}`)
	}
}

func TestListPagination(t *testing.T) {
	s, c := startSim(t, fastOpts())
	var ids []int64
	for i := range 30 {
		label := ""
		if i%3 != 0 {
			label = fmt.Sprintf("grp-%d", i%3)
		}
		ids = append(ids, launch(t, s, LaunchSpec{Label: label, Running: true, GPUName: []string{"RTX 4090", "RTX 3090"}[i%2]}))
	}

	// Default page: 25, then 5 with a null next_token.
	var seen []int64
	tok := ""
	pages := 0
	for {
		path := "/api/v1/instances/"
		if tok != "" {
			path += "?after_token=" + url.QueryEscape(tok)
		}
		m := c.do("GET", path, nil).obj(t)
		pages++
		page := m["instances"].([]any)
		if inum(t, m["instances_found"]) != int64(len(page)) || inum(t, m["total_instances"]) != 30 {
			t.Fatalf("page %d: found %v total %v len %d", pages, m["instances_found"], m["total_instances"], len(page))
		}
		lc := m["label_counts"].(map[string]any)
		if inum(t, lc[""]) != 10 || inum(t, lc["grp-1"]) != 10 || inum(t, lc["grp-2"]) != 10 {
			t.Fatalf("label_counts %v", lc)
		}
		for _, it := range page {
			seen = append(seen, inum(t, it.(map[string]any)["id"]))
		}
		if m["next_token"] == nil {
			break
		}
		tok = m["next_token"].(string)
		if pages > 5 {
			t.Fatal("too many pages")
		}
	}
	if pages != 2 || fmt.Sprint(seen) != fmt.Sprint(ids) {
		t.Fatalf("pages %d, ids %v want %v", pages, seen, ids)
	}

	limits := []struct {
		q    string
		want int
	}{{"limit=0", 5}, {"limit=-3", 5}, {"limit=7", 7}, {"limit=100", 25}}
	for _, l := range limits {
		m := c.do("GET", "/api/v1/instances/?"+l.q, nil).obj(t)
		if got := len(m["instances"].([]any)); got != l.want {
			t.Fatalf("%s: %d rows, want %d", l.q, got, l.want)
		}
	}

	// order_by with the id tie-breaker, paginated: desc by gpu_name.
	ob := url.QueryEscape(`[{"col":"gpu_name","dir":"desc"}]`)
	var got []string
	tok = ""
	for {
		path := "/api/v1/instances/?limit=4&order_by=" + ob
		if tok != "" {
			path += "&after_token=" + url.QueryEscape(tok)
		}
		m := c.do("GET", path, nil).obj(t)
		for _, it := range m["instances"].([]any) {
			r := it.(map[string]any)
			got = append(got, fmt.Sprintf("%s/%s", r["gpu_name"], r["id"]))
		}
		if m["next_token"] == nil {
			break
		}
		tok = m["next_token"].(string)
	}
	var want []string
	for _, g := range []string{"RTX 4090", "RTX 3090"} {
		for i, id := range ids {
			if []string{"RTX 4090", "RTX 3090"}[i%2] == g {
				want = append(want, fmt.Sprintf("%s/%d", g, id))
			}
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("ordered pages\n got %v\nwant %v", got, want)
	}

	// A token is bound to its ordering.
	m := c.do("GET", "/api/v1/instances/?limit=2&order_by="+ob, nil).obj(t)
	r := c.do("GET", "/api/v1/instances/?limit=2&after_token="+url.QueryEscape(m["next_token"].(string)), nil)
	if r.status != 400 || r.obj(t)["error"] != "invalid_token" {
		t.Fatalf("token reused with another order: %d %s", r.status, r.body)
	}
}

func TestListQueryErrors(t *testing.T) {
	s, c := startSim(t, fastOpts())
	a := launch(t, s, LaunchSpec{Label: "keep", Running: true})
	launch(t, s, LaunchSpec{Label: "other", Running: true})
	launch(t, s, LaunchSpec{Running: false})

	esc := url.QueryEscape
	tests := []struct {
		name     string
		query    string
		status   int
		wantBody string
		wantIDs  []int64
	}{
		{"computed dph_total", "select_filters=" + esc(`{"dph_total":{"lte":1}}`), 400,
			`{"error":"invalid_request","msg":"Error in query parameters: dph_total is not a valid search key"}`, nil},
		{"computed num_gpus", "select_filters=" + esc(`{"num_gpus":{"eq":1}}`), 400,
			`{"error":"invalid_request","msg":"Error in query parameters: num_gpus is not a valid search key"}`, nil},
		{"bad operator", "select_filters=" + esc(`{"label":{"like":"x"}}`), 400, "", nil},
		{"bare value", "select_filters=" + esc(`{"label":"keep"}`), 400, "", nil},
		{"bad JSON", "select_filters=" + esc(`{`), 400, "", nil},
		{"bad order column", "order_by=" + esc(`[{"col":"dph_total","dir":"asc"}]`), 400, "", nil},
		{"bad limit", "limit=abc", 400, "", nil},
		{"garbage token", "after_token=abc", 400, "", nil},
		{"forged token", "after_token=eyJ2IjpbXSwiaWQiOjEsIm8iOiIifQ.AAAAAAAAAAAAAAAA", 400, "", nil},
		{"label eq", "select_filters=" + esc(`{"label":{"eq":"keep"}}`), 200, "", []int64{a}},
		{"label in", "select_filters=" + esc(`{"label":{"in":["keep","zzz"]}}`), 200, "", []int64{a}},
		{"status running and id", "select_filters=" + esc(fmt.Sprintf(`{"actual_status":{"eq":"running"},"id":{"lte":%d}}`, a)), 200, "", []int64{a}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := c.do("GET", "/api/v1/instances/?"+tc.query, nil)
			if r.status != tc.status {
				t.Fatalf("status %d, want %d: %s", r.status, tc.status, r.body)
			}
			m := r.obj(t)
			if tc.status == 400 {
				if _, has := m["success"]; has {
					t.Fatal("v1 list errors carry no success key")
				}
				if e := m["error"]; e != "invalid_request" && e != "invalid_token" {
					t.Fatalf("error %v", e)
				}
			}
			if tc.wantBody != "" {
				jsonEq(t, r.body, tc.wantBody)
			}
			if tc.wantIDs != nil {
				var got []int64
				for _, it := range m["instances"].([]any) {
					got = append(got, inum(t, it.(map[string]any)["id"]))
				}
				if fmt.Sprint(got) != fmt.Sprint(tc.wantIDs) {
					t.Fatalf("ids %v, want %v", got, tc.wantIDs)
				}
			}
		})
	}

	t.Run("select_cols", func(t *testing.T) {
		m := c.do("GET", "/api/v1/instances/?limit=1&select_cols="+esc(`["id","label","no_such_col"]`), nil).obj(t)
		row := m["instances"].([]any)[0].(map[string]any)
		if len(row) != 3 || row["no_such_col"] != nil || inum(t, row["id"]) != a {
			t.Fatalf("projection %v", row)
		}
	})
}

func findOffers(t *testing.T, c *apiClient, q any) []map[string]any {
	t.Helper()
	r := c.do("POST", "/api/v0/bundles/", q)
	if r.status != 200 {
		t.Fatalf("bundles: %d %s", r.status, r.body)
	}
	arr, ok := r.obj(t)["offers"].([]any)
	if !ok {
		t.Fatalf("offers is not an array: %s", r.body)
	}
	var out []map[string]any
	for _, o := range arr {
		out = append(out, o.(map[string]any))
	}
	return out
}

func TestBundles(t *testing.T) {
	s, c := startSim(t, fastOpts())
	all := findOffers(t, c, map[string]any{})
	if len(all) < 8 {
		t.Fatalf("default catalog has %d offers", len(all))
	}
	machines := map[any]bool{}
	for _, o := range all {
		machines[o["machine_id"].(json.Number).String()] = true
	}
	if len(machines) < 4 {
		t.Fatalf("offers on %d machines", len(machines))
	}

	t.Run("bare value rejected", func(t *testing.T) {
		r := c.do("POST", "/api/v0/bundles/", map[string]any{"gpu_name": "RTX 4090", "limit": 3})
		if r.status != 400 {
			t.Fatalf("status %d", r.status)
		}
		jsonEq(t, r.body, `{"success":false,"error":"bad_request","msg":"q.gpu_name: Input should be a valid dictionary"}`)
	})
	t.Run("bad type", func(t *testing.T) {
		r := c.do("POST", "/api/v0/bundles/", map[string]any{"type": "cheap"})
		if r.status != 400 || r.obj(t)["error"] != "bad_request" {
			t.Fatalf("%d %s", r.status, r.body)
		}
	})

	tests := []struct {
		name  string
		q     map[string]any
		check func(t *testing.T, offers []map[string]any)
	}{
		{"order by price, limit", map[string]any{"order": [][]string{{"dph_total", "asc"}}, "limit": 4, "type": "on-demand"},
			func(t *testing.T, offers []map[string]any) {
				if len(offers) != 4 {
					t.Fatalf("%d offers", len(offers))
				}
				for i := 1; i < len(offers); i++ {
					if num(t, offers[i-1]["dph_total"]) > num(t, offers[i]["dph_total"]) {
						t.Fatal("not sorted by dph_total")
					}
				}
			}},
		{"4090 in MB with slack", map[string]any{"gpu_name": map[string]any{"eq": "RTX 4090"}, "gpu_ram": map[string]any{"gte": 24000}, "type": "ondemand"},
			func(t *testing.T, offers []map[string]any) {
				if len(offers) < 3 {
					t.Fatalf("%d offers", len(offers))
				}
				for _, o := range offers {
					if o["gpu_name"] != "RTX 4090" || inum(t, o["gpu_ram"]) != 24564 {
						t.Fatalf("offer %v %v", o["gpu_name"], o["gpu_ram"])
					}
				}
			}},
		{"4090 with GiB math excludes every 4090", map[string]any{"gpu_name": map[string]any{"eq": "RTX 4090"}, "gpu_ram": map[string]any{"gte": 24576}},
			func(t *testing.T, offers []map[string]any) {
				if len(offers) != 0 {
					t.Fatalf("%d offers", len(offers))
				}
			}},
		{"5090 ram", map[string]any{"gpu_name": map[string]any{"eq": "RTX 5090"}},
			func(t *testing.T, offers []map[string]any) {
				if len(offers) == 0 || inum(t, offers[0]["gpu_ram"]) != 32607 {
					t.Fatalf("offers %v", offers)
				}
			}},
		{"geolocation by country", map[string]any{"geolocation": map[string]any{"in": []string{"US"}}, "reliability2": map[string]any{"gte": 0.98}},
			func(t *testing.T, offers []map[string]any) {
				if len(offers) == 0 {
					t.Fatal("no US offers")
				}
				for _, o := range offers {
					if !strings.HasSuffix(o["geolocation"].(string), ", US") || num(t, o["reliability2"]) < 0.98 {
						t.Fatalf("offer %v %v", o["geolocation"], o["reliability2"])
					}
				}
			}},
		{"CLI defaults and direct ports", map[string]any{"verified": map[string]any{"eq": true}, "external": map[string]any{"eq": false}, "rentable": map[string]any{"eq": true}, "rented": map[string]any{"eq": false}, "direct_port_count": map[string]any{"gte": 1}, "type": "bid"},
			func(t *testing.T, offers []map[string]any) {
				for _, o := range offers {
					if o["verification"] != "verified" || inum(t, o["direct_port_count"]) < 1 {
						t.Fatalf("offer %v", o["id"])
					}
				}
				if len(offers) != len(all)-1 {
					t.Fatalf("%d offers, want all but the unverified one", len(offers))
				}
			}},
		{"machine blocklist", map[string]any{"machine_id": map[string]any{"notin": []int{41001}}},
			func(t *testing.T, offers []map[string]any) {
				for _, o := range offers {
					if inum(t, o["machine_id"]) == 41001 {
						t.Fatal("blocked machine listed")
					}
				}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.check(t, findOffers(t, c, tc.q)) })
	}

	t.Run("GET with q", func(t *testing.T) {
		q := url.QueryEscape(`{"gpu_name":{"eq":"A100 PCIE"}}`)
		r := c.do("GET", "/api/v0/bundles/?q="+q, nil)
		offers := r.obj(t)["offers"].([]any)
		if len(offers) != 1 {
			t.Fatalf("%d offers", len(offers))
		}
	})
	t.Run("removed offer disappears", func(t *testing.T) {
		id := inum(t, all[0]["id"])
		s.RemoveOffer(id)
		for _, o := range findOffers(t, c, map[string]any{}) {
			if inum(t, o["id"]) == id {
				t.Fatal("removed offer still listed")
			}
		}
	})
}

func TestCreateLifecycle(t *testing.T) {
	t.Parallel()
	opts := fastOpts()
	// actual_status is null for the first quarter: 1s, long enough for
	// the show right after the create even on a loaded machine.
	opts.LoadingDelay = 4 * time.Second
	_, c := startSim(t, opts)
	offers := findOffers(t, c, map[string]any{"gpu_name": map[string]any{"eq": "RTX 5090"}, "order": [][]string{{"dph_total", "asc"}}})
	offer := offers[0]
	offerID := inum(t, offer["id"])

	body := map[string]any{
		"client_id": "me", "image": "vllm/vllm-openai:latest", "label": "gw-1", "disk": 40, "runtype": "args",
		"env":     map[string]string{"VLLM_MODEL": "Qwen/Qwen3-8B", "WEB_PASSWORD": "s3cret", "-p 8000:8000": "1", "-p 8080:8080": "1"},
		"onstart": "echo hi",
	}
	r := c.do("PUT", fmt.Sprintf("/api/v0/asks/%d/", offerID), body)
	if r.status != 200 {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	m := r.obj(t)
	id := inum(t, m["new_contract"])
	if m["success"] != true || id == offerID || id <= 0 || !hex64.MatchString(m["instance_api_key"].(string)) {
		t.Fatalf("create response %s", r.body)
	}
	show := func() map[string]any {
		return c.do("GET", fmt.Sprintf("/api/v0/instances/%d/", id), nil).obj(t)["instances"].(map[string]any)
	}
	first := show()
	if first["actual_status"] != nil || first["ports"] != nil || inum(t, first["direct_port_start"]) != -1 || first["public_ipaddr"] != "127.0.0.1" {
		t.Fatalf("just created: status %v ports %v dps %v ip %v", first["actual_status"], first["ports"], first["direct_port_start"], first["public_ipaddr"])
	}
	for _, o := range findOffers(t, c, map[string]any{}) {
		if inum(t, o["id"]) == offerID {
			t.Fatal("rented offer still offered")
		}
	}
	r = c.do("PUT", fmt.Sprintf("/api/v0/asks/%d/", offerID), body)
	if r.status != 400 {
		t.Fatalf("second create on same offer: %d", r.status)
	}
	jsonEq(t, r.body, fmt.Sprintf(`{"success":false,"error":"invalid_args","msg":"error 404/3603: no_such_ask  Instance type by id %d is not available.","ask_id":%d}`, offerID, offerID))

	if first["gpu_name"] != "RTX 5090" || inum(t, first["machine_id"]) != inum(t, offer["machine_id"]) || first["label"] != "gw-1" {
		t.Fatalf("offer fields not copied: %v %v", first["gpu_name"], first["machine_id"])
	}
	if first["image_uuid"] != "vllm/vllm-openai:latest" || first["onstart"] != "echo hi" || first["image_runtype"] != "args" {
		t.Fatalf("image fields: %v %v %v", first["image_uuid"], first["onstart"], first["image_runtype"])
	}
	env := fmt.Sprint(first["extra_env"])
	for _, want := range []string{"[VLLM_MODEL Qwen/Qwen3-8B]", "[-p 8000:8000 1]", "[-p 8080:8080 1]"} {
		if !strings.Contains(env, want) {
			t.Fatalf("extra_env %s lacks %s", env, want)
		}
	}

	sawLoading := false
	var running map[string]any
	waitFor(t, 30*time.Second, "running", func() bool {
		in := show()
		if in["actual_status"] == "loading" {
			sawLoading = true
			if len(in["ports"].(map[string]any)) != 0 {
				t.Fatal("ports published while loading")
			}
		}
		if in["actual_status"] == "running" {
			running = in
			return true
		}
		return false
	})
	if !sawLoading {
		t.Fatal("never observed loading")
	}
	ports := running["ports"].(map[string]any)
	if len(ports) != 2 || ports["8000/tcp"] == nil || ports["8080/tcp"] == nil {
		t.Fatalf("ports %v", ports)
	}
	hp := ports["8080/tcp"].([]any)[0].(map[string]any)["HostPort"].(string)
	models := engineReq(t, "127.0.0.1:"+hp, "GET", "/v1/models", "s3cret", nil)
	if models.status != 200 || !strings.Contains(string(models.body), `"Qwen/Qwen3-8B"`) {
		t.Fatalf("models via WEB_PASSWORD on 8080: %d %s", models.status, models.body)
	}
}

func TestCreateValidation(t *testing.T) {
	_, c := startSim(t, fastOpts())
	offerID := inum(t, findOffers(t, c, map[string]any{})[0]["id"])
	path := fmt.Sprintf("/api/v0/asks/%d/", offerID)
	tests := []struct {
		name   string
		path   string
		body   any
		status int
		code   string
	}{
		{"env as string", path, `{"image":"x","env":"-e A=1 -p 8000:8000"}`, 400, "invalid_args"},
		{"env as list", path, `{"image":"x","env":[["A","1"]]}`, 400, "invalid_args"},
		{"env non-string value", path, `{"image":"x","env":{"A":1}}`, 400, "invalid_args"},
		{"env null", path, `{"image":"x","env":null}`, 400, "invalid_args"},
		{"body is a list", path, `[1,2]`, 400, "invalid_args"},
		{"body not JSON", path, `image=x`, 400, "invalid_args"},
		{"label over 256", path, map[string]any{"image": "x", "env": map[string]string{}, "label": strings.Repeat("a", 257)}, 400, "invalid_args"},
		{"no image", path, map[string]any{"env": map[string]string{}}, 400, "invalid_args"},
		{"env value too long", path, map[string]any{"image": "x", "env": map[string]string{"A": strings.Repeat("v", 257)}}, 400, "invalid_args"},
		{"bid too high", path, map[string]any{"image": "x", "env": map[string]string{}, "price": 500}, 400, "invalid_price"},
		{"disk too small", path, map[string]any{"image": "x", "env": map[string]string{}, "disk": 2}, 400, "invalid_args"},
		{"unknown offer", "/api/v0/asks/12345/", map[string]any{"image": "x", "env": map[string]string{}}, 400, "invalid_args"},
		{"non-numeric offer", "/api/v0/asks/abc/", map[string]any{"image": "x", "env": map[string]string{}}, 400, "invalid_args"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := c.do("PUT", tc.path, tc.body)
			if r.status != tc.status {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
			m := r.obj(t)
			if m["success"] != false || m["error"] != tc.code {
				t.Fatalf("body %s", r.body)
			}
		})
	}
	// Nothing above rented the offer.
	r := c.do("PUT", path, map[string]any{"image": "x", "env": map[string]string{}, "price": 0.2})
	if r.status != 200 {
		t.Fatalf("valid bid create: %d %s", r.status, r.body)
	}
	id := inum(t, r.obj(t)["new_contract"])
	in := c.do("GET", fmt.Sprintf("/api/v0/instances/%d/", id), nil).obj(t)["instances"].(map[string]any)
	if in["is_bid"] != true || num(t, in["dph_base"]) != 0.2 {
		t.Fatalf("bid instance: %v %v", in["is_bid"], in["dph_base"])
	}
	// The default engine port is 8000 when no -p key is given.
	if fmt.Sprint(in["extra_env"]) != "[]" {
		t.Fatalf("extra_env %v", in["extra_env"])
	}
}

func TestDestroyIsAsynchronous(t *testing.T) {
	opts := fastOpts()
	opts.DestroyDelay = 500 * time.Millisecond
	s, c := startSim(t, opts)
	id := launch(t, s, LaunchSpec{Label: "doomed", Running: true})
	keep := launch(t, s, LaunchSpec{Running: true})
	addr := s.info(t, id).EngineAddr

	r := c.do("DELETE", fmt.Sprintf("/api/v0/instances/%d/", id), map[string]any{})
	if r.status != 200 {
		t.Fatalf("destroy: %d", r.status)
	}
	jsonEq(t, r.body, `{"success":true}`)
	destroyedAt := time.Now()

	if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		conn.Close()
		t.Fatal("engine still accepting after destroy")
	}
	show := c.do("GET", fmt.Sprintf("/api/v0/instances/%d/", id), nil).obj(t)["instances"]
	if time.Since(destroyedAt) < opts.DestroyDelay {
		in, ok := show.(map[string]any)
		if !ok || in["cur_state"] != "unloaded" {
			t.Fatalf("during the destroy window: %v", show)
		}
		list := c.do("GET", "/api/v1/instances/", nil).obj(t)
		if inum(t, list["total_instances"]) != 2 {
			t.Fatalf("v1 list should still list it: %v", list["total_instances"])
		}
	}
	waitFor(t, 5*time.Second, "disappearance", func() bool {
		return string(c.do("GET", fmt.Sprintf("/api/v0/instances/%d/", id), nil).body) == "{\"instances\":null}\n"
	})
	list := c.do("GET", "/api/v1/instances/", nil).obj(t)
	rows := list["instances"].([]any)
	if len(rows) != 1 || inum(t, rows[0].(map[string]any)["id"]) != keep {
		t.Fatalf("after destroy: %v", rows)
	}
	r = c.do("DELETE", fmt.Sprintf("/api/v0/instances/%d/", id), nil)
	if r.status != 404 || r.obj(t)["error"] != "not_found" || r.obj(t)["success"] != false {
		t.Fatalf("second destroy: %d %s", r.status, r.body)
	}
	if info := s.info(t, id); !info.Destroyed || !info.Gone {
		t.Fatalf("info %+v", info)
	}
}

func TestDestroyedOfferReturns(t *testing.T) {
	s, c := startSim(t, fastOpts())
	offerID := inum(t, findOffers(t, c, map[string]any{})[0]["id"])
	r := c.do("PUT", fmt.Sprintf("/api/v0/asks/%d/", offerID), map[string]any{"image": "x", "env": map[string]string{}})
	id := inum(t, r.obj(t)["new_contract"])
	s.Remove(id)
	waitFor(t, 5*time.Second, "offer back on the market", func() bool {
		for _, o := range findOffers(t, c, map[string]any{}) {
			if inum(t, o["id"]) == offerID {
				return true
			}
		}
		return false
	})
}

func TestLabelAndState(t *testing.T) {
	s, c := startSim(t, fastOpts())
	id := launch(t, s, LaunchSpec{Running: true})
	p := fmt.Sprintf("/api/v0/instances/%d/", id)

	tests := []struct {
		name   string
		path   string
		body   any
		status int
		want   string
	}{
		{"set label", p, map[string]any{"label": "gw-7"}, 200, fmt.Sprintf(`{"success":true,"msg":"label for %d set to 'gw-7'"}`, id)},
		{"label too long", p, map[string]any{"label": strings.Repeat("x", 1025)}, 400, ""},
		{"label 1024 ok", p, map[string]any{"label": strings.Repeat("x", 1024)}, 200, ""},
		{"unknown id", "/api/v0/instances/999/", map[string]any{"label": "x"}, 404, ""},
		{"bad state", p, map[string]any{"state": "paused"}, 400, ""},
		{"empty body", p, map[string]any{}, 400, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := c.do("PUT", tc.path, tc.body)
			if r.status != tc.status {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
			if tc.want != "" {
				jsonEq(t, r.body, tc.want)
			}
		})
	}
	r := c.do("PUT", p, map[string]any{"label": strings.Repeat("x", 1025)})
	if r.obj(t)["error"] != "label_too_long" {
		t.Fatalf("%s", r.body)
	}
	r = c.do("PUT", "/api/v0/instances/999/", map[string]any{"label": "x"})
	if r.obj(t)["error"] != "no_such_instance" {
		t.Fatalf("%s", r.body)
	}
	c.do("PUT", p, map[string]any{"label": ""})
	in := c.do("GET", p, nil).obj(t)["instances"].(map[string]any)
	if in["label"] != nil {
		t.Fatalf("cleared label = %v", in["label"])
	}

	// Stop: still listed, disk-only billing, engine closed.
	addr := s.info(t, id).EngineAddr
	if r := c.do("PUT", p, map[string]any{"state": "stopped"}); r.status != 200 {
		t.Fatalf("stop: %d %s", r.status, r.body)
	}
	in = c.do("GET", p, nil).obj(t)["instances"].(map[string]any)
	if in["actual_status"] != "stopped" || in["intended_status"] != "stopped" || in["cur_state"] != "stopped" {
		t.Fatalf("stopped: %v %v %v", in["actual_status"], in["intended_status"], in["cur_state"])
	}
	if num(t, in["instance"].(map[string]any)["totalHour"]) != num(t, in["storage_total_cost"]) || num(t, in["storage_total_cost"]) <= 0 {
		t.Fatal("stopped instance must keep its disk price")
	}
	list := c.do("GET", "/api/v1/instances/?select_filters="+url.QueryEscape(`{"actual_status":{"eq":"stopped"}}`), nil).obj(t)
	if inum(t, list["total_instances"]) != 1 {
		t.Fatal("stopped instance not listed")
	}
	if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		conn.Close()
		t.Fatal("engine of a stopped instance still accepts")
	}

	// Start: through loading to running, engine back.
	if r := c.do("PUT", p, map[string]any{"state": "running"}); r.status != 200 {
		t.Fatalf("start: %d", r.status)
	}
	if st := c.do("GET", p, nil).obj(t)["instances"].(map[string]any)["actual_status"]; st != "loading" {
		t.Fatalf("after start: %v", st)
	}
	waitFor(t, 5*time.Second, "running again", func() bool {
		return c.do("GET", p, nil).obj(t)["instances"].(map[string]any)["actual_status"] == "running"
	})
	info := s.info(t, id)
	if r := engineReq(t, info.EngineAddr, "GET", "/health", info.JupyterToken, nil); r.status != 200 {
		t.Fatalf("engine after restart: %d", r.status)
	}
}

func TestRebootKeepsPorts(t *testing.T) {
	s, c := startSim(t, fastOpts())
	id := launch(t, s, LaunchSpec{Running: true})
	before := s.info(t, id).EngineAddr
	r := c.do("PUT", fmt.Sprintf("/api/v0/instances/reboot/%d/", id), map[string]any{})
	if r.status != 200 {
		t.Fatalf("reboot: %d %s", r.status, r.body)
	}
	waitFor(t, 5*time.Second, "running", func() bool { return s.info(t, id).ActualStatus == "running" })
	info := s.info(t, id)
	if info.EngineAddr != before {
		t.Logf("port changed on reboot (%s -> %s): allowed when the old one was taken", before, info.EngineAddr)
	}
	if r := engineReq(t, info.EngineAddr, "GET", "/health", info.JupyterToken, nil); r.status != 200 {
		t.Fatalf("engine after reboot: %d", r.status)
	}
}

func TestSetStatusAndIntended(t *testing.T) {
	s, c := startSim(t, fastOpts())
	id := launch(t, s, LaunchSpec{Running: false})
	p := fmt.Sprintf("/api/v0/instances/%d/", id)
	show := func() map[string]any { return c.do("GET", p, nil).obj(t)["instances"].(map[string]any) }

	// Stuck loading with intended_status flipped by vast.ai.
	s.SetStatus(id, "loading")
	s.SetIntendedStatus(id, "stopped")
	time.Sleep(300 * time.Millisecond) // longer than LoadingDelay: the lifecycle must stay frozen
	in := show()
	if in["actual_status"] != "loading" || in["intended_status"] != "stopped" {
		t.Fatalf("stuck: %v %v", in["actual_status"], in["intended_status"])
	}
	for _, st := range []string{"exited", "unknown", "offline"} {
		s.SetStatus(id, st)
		in := show()
		if in["actual_status"] != st || len(in["ports"].(map[string]any)) != 0 {
			t.Fatalf("%s: %v ports %v", st, in["actual_status"], in["ports"])
		}
	}
	s.SetStatus(id, "running")
	s.SetIntendedStatus(id, "running")
	if show()["actual_status"] != "running" {
		t.Fatal("not running")
	}
	info := s.info(t, id)
	if r := engineReq(t, info.EngineAddr, "GET", "/health", info.JupyterToken, nil); r.status != 200 {
		t.Fatalf("engine after revive: %d", r.status)
	}
}

func TestUserAndSSH(t *testing.T) {
	s, c := startSim(t, fastOpts())
	m := c.do("GET", "/api/v0/users/current/", nil).obj(t)
	if num(t, m["credit"]) != 100 || m["email"] == nil || m["ssh_key"] == nil || m["balance"] == nil || m["id"] == nil {
		t.Fatalf("user %v", m)
	}
	id := launch(t, s, LaunchSpec{Running: true})
	p := fmt.Sprintf("/api/v0/instances/%d/ssh/", id)
	if r := c.do("POST", p, map[string]any{"ssh_key": "not a key"}); r.status != 400 {
		t.Fatalf("bad key: %d", r.status)
	}
	r := c.do("POST", p, map[string]any{"ssh_key": "ssh-ed25519 AAAAC3Nza gw@host"})
	jsonEq(t, r.body, `{"success":true,"msg":"SSH key attached successfully"}`)
	lm := c.do("GET", p, nil).obj(t)
	str, ok := lm["ssh_keys"].(string)
	if !ok {
		t.Fatalf("ssh_keys must be a JSON string: %v", lm)
	}
	var keys []struct {
		ID        int64  `json:"id"`
		Name      string `json:"name"`
		PublicKey string `json:"public_key"`
	}
	if err := json.Unmarshal([]byte(str), &keys); err != nil || len(keys) != 1 || keys[0].Name != "gw@host" {
		t.Fatalf("keys %q %v", str, err)
	}
	r = c.do("DELETE", p+strconv.FormatInt(keys[0].ID, 10)+"/", nil)
	jsonEq(t, r.body, `{"success":true,"msg":"SSH key removed from instance."}`)
	if r := c.do("DELETE", p+"1/", nil); r.status != 404 || r.obj(t)["error"] != "no_such_ssh_key" {
		t.Fatalf("%d %s", r.status, r.body)
	}
}

func TestRouting(t *testing.T) {
	_, c := startSim(t, fastOpts())
	tests := []struct {
		method, path string
		status       int
	}{
		{"GET", "/api/v1/instances", 404},
		{"GET", "/api/v0/users/current", 404},
		{"POST", "/api/v1/instances/", 405},
		{"PATCH", "/api/v0/instances/1/", 405},
		{"GET", "/api/v0/nothing/", 404},
		{"GET", "/", 404},
	}
	for _, tc := range tests {
		r := c.do(tc.method, tc.path, nil)
		if r.status != tc.status {
			t.Errorf("%s %s: %d, want %d", tc.method, tc.path, r.status, tc.status)
		}
	}
}
