package cli_test

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/caddy-vastai/caddy-vastai/adminapi"
	"github.com/caddy-vastai/caddy-vastai/vastsim"
)

// TestKeysCommands: create prints the secret once, ls and usage show the
// key in aligned tables with money as $0.00 and never the secret, revoke
// asks for confirmation off a terminal, and revokes with --yes.
func TestKeysCommands(t *testing.T) {
	sim := newSim(t, vastsim.Options{})
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	startCaddy(t, caddyfileFor(t, admin, sim.URL()))
	a := []string{"--address", admin}

	r := mustRun(t, append([]string{"keys", "create", "team-b", "--pools", "llm", "--rpm", "60", "--budget", "10", "--period", "day"}, a...)...)
	secret := regexp.MustCompile(`cvk_[A-Za-z0-9_-]{43}`).FindString(r.stdout)
	if secret == "" || !strings.Contains(r.stdout, "shown only now") {
		t.Fatalf("create: %s", r)
	}
	ls := mustRun(t, append([]string{"keys", "ls"}, a...)...)
	for _, want := range []string{"NAME", "team-b", "active", "api", "llm", "60 rpm", "$10.00/day", "$0.00"} {
		if !strings.Contains(ls.stdout, want) {
			t.Errorf("keys ls lacks %q:\n%s", want, ls.stdout)
		}
	}
	usage := mustRun(t, append([]string{"usage", "--period", "day"}, a...)...)
	if !strings.Contains(usage.stdout, "TOKENS IN") || !strings.Contains(usage.stdout, "team-b") || !strings.Contains(usage.stdout, "Total: $0.00.") {
		t.Errorf("usage:\n%s", usage.stdout)
	}
	one := mustRun(t, append([]string{"usage", "team-b", "--period", "total"}, a...)...)
	if !strings.Contains(one.stdout, "team-b") {
		t.Errorf("usage team-b:\n%s", one.stdout)
	}
	for _, out := range []string{ls.stdout, usage.stdout, one.stdout} {
		if strings.Contains(out, secret) {
			t.Error("a listing shows the secret")
		}
	}
	if r := runCLI(t, append([]string{"keys", "revoke", "team-b"}, a...)...); r.code == 0 || !strings.Contains(r.stderr, "--yes") {
		t.Errorf("revoke without --yes off a terminal: %s", r)
	}
	mustRun(t, append([]string{"keys", "revoke", "team-b", "--yes"}, a...)...)
	var list []adminapi.Key
	runJSON(t, &list, append([]string{"keys", "ls"}, a...)...)
	if len(list) != 1 || list[0].Status != "revoked" || list[0].Revoked == nil {
		t.Fatalf("after revoke: %+v", list)
	}
	if r := runCLI(t, append([]string{"usage", "--period", "week"}, a...)...); r.code == 0 {
		t.Errorf("usage --period week: %s", r)
	}
}
