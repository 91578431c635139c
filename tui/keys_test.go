package tui

import (
	"errors"
	"strings"
	"testing"
)

// fleetKeys is GET /vastai/keys: a config key with limits and a daily
// budget 40% spent, and an expired key created through the API.
const fleetKeys = `[
 {"name":"team-a","source":"config","status":"active","rpm":60,"tpm":100000,"max_parallel":4,"budget":10,"period":"day",
  "spent":4,"reserved":0.13,"in_flight":2,"expires":"2027-01-01T00:00:00Z","created":null,"revoked":null,
  "day":{"period":"day","period_id":"2026-12-02","requests":1234,"tokens_in":56789,"tokens_out":98765,"spend":4},
  "month":{"period":"month","period_id":"2026-12","requests":99999,"tokens_in":1,"tokens_out":1,"spend":40},
  "total":{"period":"total","period_id":"","requests":99999,"tokens_in":1,"tokens_out":1,"spend":40}},
 {"name":"old","source":"api","status":"expired","period":"month","spent":0.004,"reserved":0,"in_flight":0,
  "expires":"2026-12-01T12:30:00Z","created":null,"revoked":null,
  "day":{"period":"day"},"month":{"period":"month","requests":7,"tokens_in":70,"tokens_out":700,"spend":0.004},"total":{"period":"total"}}
]`

func keysFake() *fakeAPI {
	api := newFake()
	api.set("GET /vastai/keys", fleetKeys)
	return api
}

// line returns the first line of view containing s.
func line(t *testing.T, view, s string) string {
	t.Helper()
	for _, l := range strings.Split(view, "\n") {
		if strings.Contains(l, s) {
			return l
		}
	}
	t.Fatalf("no line with %q:\n%s", s, view)
	return ""
}

// rightEdge is the column where the first s on l ends.
func rightEdge(t *testing.T, l, s string) int {
	t.Helper()
	i := strings.Index(l, s)
	if i < 0 {
		t.Fatalf("%q not in %q", s, l)
	}
	return len([]rune(l[:i+len(s)]))
}

func TestKeysPanelShowsEveryKeyAligned(t *testing.T) {
	m := testModel(t, keysFake(), Options{})
	mustNotContain(t, m.View(), "Client keys")
	cmd := press(m, "K")
	if cmd == nil {
		t.Fatal("K started no refresh")
	}
	m.Update(cmd())
	v := m.View()
	mustContain(t, v, "Client keys (2)", "K keys",
		"team-a", "active", "$10.00/day", "$4.00", "███░░░░░ 40%", "$0.13", "1234", "56789", "98765", "2027-01-01 (in 29d14h)",
		"old*", "expired", "$0.004", "700", "2026-12-01 12:30 UTC (21h30m ago)")
	mustNotContain(t, v, "99999", "stale since")

	// Numbers align right under their titles: the cell ending where the
	// title ends is the figure.
	head := []rune(line(t, v, "TOK OUT"))
	for _, c := range []struct{ title, a, b string }{
		{"RPM", "60", "-"}, {"BUDGET", "$10.00/day", "-"}, {"SPENT", "$4.00", "$0.004"}, {"RESERVED", "$0.13", "$0.00"},
		{"REQS", "1234", "7"}, {"TOK IN", "56789", "70"}, {"TOK OUT", "98765", "700"},
	} {
		end := rightEdge(t, string(head), c.title)
		for name, want := range map[string]string{"team-a": c.a, "old*": c.b} {
			r := []rune(line(t, v, name))
			fields := strings.Fields(string(r[:end]))
			if len(fields) == 0 || fields[len(fields)-1] != want || (end < len(r) && r[end] != ' ') {
				t.Errorf("%s: %s's cell ending under the title is %q, want %q:\n%s\n%s", c.title, name, fields, want, string(head), string(r))
			}
		}
	}
	if a := line(t, v, "team-a"); strings.Index(a, "team-a") != strings.Index(string(head), "KEY") {
		t.Errorf("names do not start under KEY:\n%s\n%s", string(head), a)
	}
}

func TestKeysAreFetchedOnlyWhilePanelIsOpen(t *testing.T) {
	api := keysFake()
	m := testModel(t, api, Options{})
	refresh(t, m)
	if n, _ := api.called("GET /vastai/keys"); n != 0 {
		t.Fatalf("%d keys requests with the panel closed", n)
	}
	m.Update(press(m, "K")())
	refresh(t, m)
	if n, _ := api.called("GET /vastai/keys"); n != 2 {
		t.Fatalf("%d keys requests, want one on K and one per refresh", n)
	}
	// Refreshed with the rest: a new answer shows at the next refresh.
	api.set("GET /vastai/keys", strings.Replace(fleetKeys, `"requests":1234`, `"requests":1235`, 1))
	refresh(t, m)
	mustContain(t, m.View(), "1235")
	if press(m, "K") != nil {
		t.Fatal("closing the panel started a refresh")
	}
	refresh(t, m)
	if n, _ := api.called("GET /vastai/keys"); n != 3 {
		t.Fatalf("%d keys requests, want none more once closed", n)
	}
	mustNotContain(t, m.View(), "Client keys", "team-a")
}

func TestKeysPanelWithoutKeysOrEndpoint(t *testing.T) {
	api := newFake()
	api.set("GET /vastai/keys", `[]`)
	m := testModel(t, api, Options{})
	mustContain(t, m.View(), "K keys")
	m.Update(press(m, "K")())
	mustContain(t, m.View(), "Client keys (0)", "no client keys")

	// A gateway without the endpoint: the panel says so, the rest is not
	// stale.
	api.mu.Lock()
	api.fail["GET /vastai/keys"] = errors.New("404 page not found")
	api.mu.Unlock()
	press(m, "K")
	m.Update(press(m, "K")())
	v := m.View()
	mustContain(t, v, "Client keys", "404 page not found", "loading…", "1001")
	mustNotContain(t, v, "stale since")
}

func TestLowerKStillMovesUp(t *testing.T) {
	m := testModel(t, keysFake(), Options{})
	press(m, "down", "k")
	if in := m.current(); in == nil || in.ID != 1001 || m.showKeys {
		t.Fatalf("k: selected %+v, keys panel %t; want 1001 and no panel", in, m.showKeys)
	}
}
