package vastclient

import (
	"encoding/json"
	"errors"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
)

// fixtureSeeds returns every JSON file under testdata.
func fixtureSeeds(f *testing.F) [][]byte {
	f.Helper()
	var seeds [][]byte
	err := filepath.WalkDir("testdata", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".json") {
			return err
		}
		seeds = append(seeds, fixture(f, strings.TrimPrefix(filepath.ToSlash(path), "testdata/")))
		return nil
	})
	if err != nil || len(seeds) == 0 {
		f.Fatalf("no fixture seeds: %v", err)
	}
	return seeds
}

func FuzzInstanceDecode(f *testing.F) {
	for _, s := range fixtureSeeds(f) {
		f.Add(s)
		// The show fixtures wrap the instance; add the inner object too.
		var wrapped map[string]json.RawMessage
		if json.Unmarshal(s, &wrapped) == nil && len(wrapped["instances"]) > 0 {
			f.Add([]byte(wrapped["instances"]))
		}
	}
	f.Add([]byte(`{"id": 1, "ports": {"8000/tcp": [{"HostIp": "::", "HostPort": 1}, {"HostIp": "0.0.0.0", "HostPort": "99999"}]}, "extra_env": [["A"], ["", "b"], ["C", {"x": 1}]]}`))
	f.Add([]byte(`{"id": "9223372036854775807", "ssh_port": 1e400, "gpu_util": "NaN", "dph_total": "Inf"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var in Instance
		if json.Unmarshal(data, &in) == nil {
			if p, ok := in.Ports.HostPort(8000, "tcp"); ok && (p <= 0 || p > 65535) {
				t.Fatalf("HostPort returned %d", p)
			}
			_ = in.ExtraEnv.Vars()
			if in.Valid() != (in.ID > 0) {
				t.Fatal("Valid disagrees with ID")
			}
		}
		var p Ports
		if err := p.UnmarshalJSON(data); err != nil {
			t.Fatalf("Ports.UnmarshalJSON failed: %v", err)
		}
		for key := range p {
			_, _ = p.HostPort(len(key), "tcp")
		}
		var e Env
		if err := e.UnmarshalJSON(data); err != nil {
			t.Fatalf("Env.UnmarshalJSON failed: %v", err)
		}
		if _, ok := e[""]; ok {
			t.Fatal("Env kept an empty key")
		}
		var o Offer
		_ = json.Unmarshal(data, &o)
		var u User
		_ = json.Unmarshal(data, &u)
		_, _ = decodeOffers(data)
	})
}

func FuzzListPage(f *testing.F) {
	for _, s := range fixtureSeeds(f) {
		f.Add(s)
	}
	for _, s := range []string{
		`{"success": true, "instances_found": 2, "total_instances": 30, "next_token": "abc", "instances": [{"id": 1}, {"id": "2"}]}`,
		`{"instances": null, "total_instances": 0}`,
		`{"instances": null, "total_instances": "0"}`,
		`{"instances": [null, 1, "x", {"id": -1}], "next_token": 5}`,
		`{"success": false, "instances": []}`,
		`{"error": "invalid_token", "msg": "bad"}`,
		`null`, ``, `[]`, `{"instances": {}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		page, err := decodeListPage(data)
		if err != nil {
			if page != nil {
				t.Fatal("page returned with an error")
			}
			return
		}
		if page.skipped < 0 {
			t.Fatalf("skipped = %d", page.skipped)
		}
		for _, in := range page.instances {
			if !in.Valid() {
				t.Fatalf("invalid instance %d kept", in.ID)
			}
		}
		// Money safety: an accepted page always declares its instances.
		m, perr := parseObject(data)
		if perr != nil {
			t.Fatalf("accepted a page that is not an object: %v", perr)
		}
		if _, ok := m["instances"]; !ok {
			t.Fatal(`accepted a page without "instances"`)
		}
		if isFalse(m["success"]) {
			t.Fatal("accepted a page with success false")
		}
	})
}

func FuzzAPIErrorParse(f *testing.F) {
	for _, s := range fixtureSeeds(f) {
		f.Add(429, s)
		f.Add(400, s)
	}
	f.Add(429, []byte("API requests too frequent"))
	f.Add(404, []byte(`{"success": false, "error": "auth_error", "msg": "Invalid user key `+testKey+`"}`))
	f.Add(400, []byte(`{"error": "x", "detail": [{"k": "`+testKey+`"}], "`+testKey+`": 1}`))
	f.Add(502, []byte("<html>"+testKey+"</html>"))
	f.Add(200, []byte(`{"msg": "\u0030123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}`))
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		e := parseAPIError("GET", "/api/v1/instances/", status, body, testKey)
		if len(e.Body) > maxBodyExcerpt {
			t.Fatalf("Body is %d bytes", len(e.Body))
		}
		for _, s := range []string{e.Error(), e.Body, e.Msg, e.Code} {
			if strings.Contains(s, testKey) {
				t.Fatalf("key leaked: %q", s)
			}
		}
		if strings.ContainsAny(e.Error(), "\n\r") {
			t.Fatalf("Error() spans lines: %q", e.Error())
		}
		for _, s := range allSentinels {
			_ = errors.Is(e, s)
		}
	})
}
