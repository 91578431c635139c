package lifecycle

import (
	"context"
	"errors"
	"io/fs"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

func TestParseLabel(t *testing.T) {
	t.Parallel()
	cases := []struct {
		in   string
		want Label
		ok   bool
	}{
		{"cv:gw:p:0123456789", Label{"gw", "p", "0123456789"}, true},
		{"cv:prod-eu-1:llama_70b.v2:abcdef0123", Label{"prod-eu-1", "llama_70b.v2", "abcdef0123"}, true},
		{"cv:gw:p:0123456789:extra", Label{}, false},
		{"cv:gw:p", Label{}, false},
		{"cv:GW:p:0123456789", Label{}, false},   // gateway ids are lower case
		{"cv:gw:p:XYZ", Label{}, false},          // op ids are hex
		{"cv:gw::0123456789", Label{}, false},    // empty pool
		{"cv::p:0123456789", Label{}, false},     // empty gateway
		{"xx:gw:p:0123456789", Label{}, false},   // another prefix
		{"cv:gw:p p:0123456789", Label{}, false}, // spaces
		{"", Label{}, false},
		{"cv:gw:" + strings.Repeat("p", 200) + ":0123456789", Label{}, false},
	}
	for _, tc := range cases {
		got, err := ParseLabel(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseLabel(%q) = %+v, %v; want %+v ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrBadLabel) {
			t.Errorf("ParseLabel(%q) error %v does not wrap ErrBadLabel", tc.in, err)
		}
		if tc.ok && (FormatLabel(got.Gateway, got.Pool, got.OpID) != tc.in || got.String() != tc.in) {
			t.Errorf("round trip of %q failed", tc.in)
		}
	}
}

func TestOwnedLabel(t *testing.T) {
	t.Parallel()
	if !strings.HasPrefix(FormatLabel("gw", "p", "0123456789"), PoolLabelPrefix("gw", "p")) ||
		PoolLabelPrefix("gw", "p") != "cv:gw:p:" || GatewayLabelPrefix("gw") != "cv:gw:" {
		t.Error("label prefixes")
	}
	cases := map[string]bool{
		"cv:gw:p:0123456789":   true,
		"cv:gw2:p:0123456789":  false, // a gateway whose id starts with ours
		"cv:other:p:012345678": false,
		"cv:gw:bad":            false,
		"cv:gw:p:nothex!":      false,
		"":                     false,
	}
	for label, want := range cases {
		if _, got := ownedLabel("gw", label); got != want {
			t.Errorf("ownedLabel(gw, %q) = %v, want %v", label, got, want)
		}
	}
}

func TestTokensAndIDs(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	counts := map[rune]int{}
	for i := 0; i < 2000; i++ {
		tok := newToken()
		if len(tok) != TokenLen || strings.Trim(tok, tokenAlphabet) != "" || seen[tok] {
			t.Fatalf("bad or repeated token %q", tok)
		}
		seen[tok] = true
		for _, r := range tok {
			counts[r]++
		}
	}
	if len(counts) != len(tokenAlphabet) {
		t.Errorf("only %d distinct characters used", len(counts))
	}
	id := newOpID()
	if len(id) != opIDLen || !validOpID(id) {
		t.Errorf("op id %q", id)
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	good := func() Config {
		return Config{GatewayID: "gw", Pools: map[string]PoolTemplate{"p": testPool()}}
	}
	cases := []struct {
		name string
		mod  func(*Config)
		want string // substring of the error; "" for valid
	}{
		{"valid", func(*Config) {}, ""},
		{"no gateway", func(c *Config) { c.GatewayID = "" }, "gateway_id"},
		{"gateway upper case", func(c *Config) { c.GatewayID = "GW" }, "gateway_id"},
		{"gateway too long", func(c *Config) { c.GatewayID = strings.Repeat("a", 33) }, "gateway_id"},
		{"orphans", func(c *Config) { c.Orphans = "kill" }, "orphans"},
		{"negative budget", func(c *Config) { c.MaxSpendPerHour = -1 }, "max_spend_per_hour"},
		{"pool name", func(c *Config) { c.Pools["a:b"] = testPool() }, "name must match"},
		{"no image", func(c *Config) { p := c.Pools["p"]; p.Image = ""; c.Pools["p"] = p }, "image"},
		{"token in env", func(c *Config) { c.Pools["p"].Env[EnvToken] = "x" }, EnvToken},
		{"small disk", func(c *Config) { p := c.Pools["p"]; p.Disk = 4; c.Pools["p"] = p }, "disk"},
		{"bid without price", func(c *Config) { p := c.Pools["p"]; p.Type = TypeBid; c.Pools["p"] = p }, "bid_price"},
		{"price without bid", func(c *Config) { p := c.Pools["p"]; p.BidPrice = 1; c.Pools["p"] = p }, "bid_price"},
		{"bad type", func(c *Config) { p := c.Pools["p"]; p.Type = "spot"; c.Pools["p"] = p }, "type"},
		{"min above max", func(c *Config) { p := c.Pools["p"]; p.MinInstances, p.MaxInstances = 3, 2; c.Pools["p"] = p }, "min_instances"},
		{"price above spend", func(c *Config) {
			p := c.Pools["p"]
			p.MaxPricePerHour, p.MaxSpendPerHour = 2, 1
			c.Pools["p"] = p
		}, "no instance could ever start"},
		{"country", func(c *Config) { p := c.Pools["p"]; p.Offer.Countries = []string{"usa"}; c.Pools["p"] = p }, "countries"},
		{"order", func(c *Config) { p := c.Pools["p"]; p.Order = [][2]string{{"dph_total", "up"}}; c.Pools["p"] = p }, "order"},
		{"reliability", func(c *Config) { p := c.Pools["p"]; p.Offer.MinReliability = 2; c.Pools["p"] = p }, "reliability"},
		{"token in env, other case", func(c *Config) { c.Pools["p"].Env["web_password"] = "x" }, EnvToken + " is generated"},
		{"filter operator", func(c *Config) {
			p := c.Pools["p"]
			p.Offer.Extra = map[string]map[string]any{"inet_down": {">=": 5}}
			c.Pools["p"] = p
		}, `offer.extra "inet_down": operator ">=" is not one of eq neq gt gte lt lte in notin`},
		{"longest label fits", func(c *Config) {
			c.GatewayID = strings.Repeat("g", 32)
			c.Pools = map[string]PoolTemplate{strings.Repeat("p", 40): testPool()}
		}, ""}, // 3+33+41+10 = 87 characters: fits
	}
	for _, tc := range cases {
		c := good()
		c.Pools["p"] = testPool()
		tc.mod(&c)
		err := c.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: unexpected error %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrInvalidConfig)):
			t.Errorf("%s: error %v, want one mentioning %q", tc.name, err, tc.want)
		}
	}
	if _, err := New(good(), nil, NewMemoryStore(), nil); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("New without api and fleet: %v", err)
	}
	d := good().withDefaults()
	p := d.Pools["p"]
	if d.Orphans != OrphansAdopt || d.GhostConfirmations != 3 || d.DestroyVerifyAttempts != 10 ||
		d.BlocklistTTL != 24*time.Hour || d.ReconcileInterval != 5*time.Minute ||
		p.ReadyTimeout.D() != 3*time.Second || p.MaxAttempts != 3 || p.Type != TypeOnDemand || p.Disk != 10 ||
		p.Order[0] != [2]string{"dph_total", "asc"} {
		t.Errorf("defaults = %+v / %+v", d, p)
	}
	if testPool().withDefaults().ReadyTimeout.D() != 3*time.Second || (PoolTemplate{}).withDefaults().ReadyTimeout.D() != 30*time.Minute {
		t.Error("ready_timeout default")
	}
}

// TestStoreSemantics runs the same checks against MemoryStore and
// certmagic's FileStorage, whose semantics the Manager relies on.
// certmagic's storage is what Caddy hands the app.
var _ Store = (*certmagic.FileStorage)(nil)

func TestStoreSemantics(t *testing.T) {
	t.Parallel()
	stores := map[string]Store{
		"memory": NewMemoryStore(),
		"file":   &certmagic.FileStorage{Path: t.TempDir()},
	}
	for name, st := range stores {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			if _, err := st.Load(ctx, "vastai/gw/operations/none.json"); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("Load of a missing key: %v", err)
			}
			if _, err := st.List(ctx, "vastai/gw/operations", false); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("List of a missing prefix: %v", err)
			}
			keys, err := listJSON(ctx, st, "vastai/gw/operations")
			if err != nil || len(keys) != 0 {
				t.Errorf("listJSON of a missing prefix = %v, %v", keys, err)
			}
			for _, k := range []string{"vastai/gw/operations/a.json", "vastai/gw/operations/b.json", "vastai/gw/instances/1.json"} {
				if err := st.Store(ctx, k, []byte(`{}`)); err != nil {
					t.Fatal(err)
				}
			}
			keys, err = listJSON(ctx, st, "vastai/gw/operations")
			slices.Sort(keys)
			if err != nil || !slices.Equal(keys, []string{"vastai/gw/operations/a.json", "vastai/gw/operations/b.json"}) {
				t.Errorf("listJSON = %v, %v", keys, err)
			}
			if err := st.Delete(ctx, "vastai/gw/operations/a.json"); err != nil {
				t.Fatal(err)
			}
			if err := st.Delete(ctx, "vastai/gw/operations/a.json"); err != nil && !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("second delete: %v", err)
			}
			// Lock excludes; a waiter gives up with its context.
			if err := st.Lock(ctx, "vastai/gw/reconcile"); err != nil {
				t.Fatal(err)
			}
			wctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
			err = st.Lock(wctx, "vastai/gw/reconcile")
			cancel()
			if err == nil {
				t.Fatal("a held lock was acquired twice")
			}
			got := make(chan error, 1)
			go func() { got <- st.Lock(ctx, "vastai/gw/reconcile") }()
			time.Sleep(20 * time.Millisecond)
			if err := st.Unlock(ctx, "vastai/gw/reconcile"); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-got:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("waiter never got the lock")
			}
			_ = st.Unlock(ctx, "vastai/gw/reconcile")
		})
	}
}
