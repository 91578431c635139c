package vastai

// The /vastai/keys endpoints: create (the secret is shown once), list
// (metadata and spend, never secrets or hashes), revoke, and a key's usage
// over a period.

import (
	"errors"
	"net/http"
	"time"

	"github.com/caddy-vastai/caddy-vastai/adminapi"
	"github.com/caddy-vastai/caddy-vastai/keys"
)

func init() {
	adminEndpoints = append(adminEndpoints,
		adminEndpoint{"keys", http.MethodGet, (*adminAPI).handleKeys},
		adminEndpoint{"keys", http.MethodPost, (*adminAPI).handleCreateKey},
		adminEndpoint{"keys/*", http.MethodGet, (*adminAPI).handleKey},
		adminEndpoint{"keys/*", http.MethodDelete, (*adminAPI).handleRevokeKey},
		adminEndpoint{"keys/*/usage", http.MethodGet, (*adminAPI).handleKeyUsage},
	)
}

// errKeysNotRunning: the key registry has not started (503).
var errKeysNotRunning = errors.New("the client key registry is not running yet; try again shortly")

// registry returns the running key registry.
func (a *adminAPI) registry() (*keys.Registry, error) {
	reg, _ := a.app.state.keyRegistry()
	if reg == nil {
		return nil, errKeysNotRunning
	}
	return reg, nil
}

// handleKeys answers GET /vastai/keys.
func (a *adminAPI) handleKeys(w http.ResponseWriter, _ *http.Request, _ string) error {
	reg, err := a.registry()
	if err != nil {
		return err
	}
	snap, now := reg.Snapshot(), time.Now()
	out := make([]adminapi.Key, 0)
	for _, name := range snap.Names() {
		e, _ := snap.Entry(name)
		out = append(out, keyView(e, now))
	}
	return writeJSON(w, http.StatusOK, out)
}

// handleKey answers GET /vastai/keys/{name}.
func (a *adminAPI) handleKey(w http.ResponseWriter, _ *http.Request, name string) error {
	reg, err := a.registry()
	if err != nil {
		return err
	}
	e, ok := reg.Snapshot().Entry(name)
	if !ok {
		return classify(keys.ErrNotFound, keyNotFound(name))
	}
	return writeJSON(w, http.StatusOK, keyView(e, time.Now()))
}

func keyNotFound(name string) error {
	return &keyError{"no key named " + clipName(name)}
}

type keyError struct{ msg string }

func (e *keyError) Error() string { return e.msg }

func clipName(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// handleCreateKey answers POST /vastai/keys with the new key and, this
// once, its secret.
func (a *adminAPI) handleCreateKey(w http.ResponseWriter, r *http.Request, _ string) error {
	reg, err := a.registry()
	if err != nil {
		return err
	}
	var spec keys.Spec
	var period, expires string
	err = decodeObject(r, `{"name":"team-b","models":["m1"],"rpm":60,"budget":10,"period":"day","expires":"2027-01-01"}`, map[string]any{
		"name": &spec.Name, "pools": &spec.Pools, "models": &spec.Models, "rpm": &spec.RPM, "tpm": &spec.TPM,
		"max_parallel": &spec.MaxParallel, "budget": &spec.Budget, "period": &period, "expires": &expires,
	})
	if err != nil {
		return err
	}
	if spec.Name == "" {
		return invalidf("name: required")
	}
	spec.Period = keys.Period(period)
	if spec.Expires, err = keys.ParseExpires(expires); err != nil {
		return classify(keys.ErrInvalid, err)
	}
	secret, k, err := reg.Create(r.Context(), spec)
	if err != nil {
		return err
	}
	e, ok := reg.Snapshot().Entry(k.Name)
	if !ok {
		return classify(errInternal, &keyError{"the new key is missing from the snapshot"})
	}
	return writeJSON(w, http.StatusCreated, adminapi.KeyCreated{Key: keyView(e, time.Now()), Secret: secret})
}

// handleRevokeKey answers DELETE /vastai/keys/{name}: the key is revoked
// here at once and on every gateway sharing the storage within a poll.
func (a *adminAPI) handleRevokeKey(w http.ResponseWriter, r *http.Request, name string) error {
	reg, err := a.registry()
	if err != nil {
		return err
	}
	if _, err := reg.Revoke(r.Context(), name); err != nil {
		return err
	}
	e, _ := reg.Snapshot().Entry(name)
	return writeJSON(w, http.StatusOK, keyView(e, time.Now()))
}

// handleKeyUsage answers GET /vastai/keys/{name}/usage?period=day|month|total
// (default month).
func (a *adminAPI) handleKeyUsage(w http.ResponseWriter, r *http.Request, name string) error {
	reg, err := a.registry()
	if err != nil {
		return err
	}
	e, ok := reg.Snapshot().Entry(name)
	if !ok {
		return classify(keys.ErrNotFound, keyNotFound(name))
	}
	p := keys.Period(r.URL.Query().Get("period"))
	switch p {
	case "":
		p = keys.PeriodMonth
	case keys.PeriodDay, keys.PeriodMonth, keys.PeriodTotal:
	default:
		return invalidf("period: %q is not day, month or total", clipName(string(p)))
	}
	u, _, _ := e.Usage(time.Now())
	v := usageView(p, u.Of(p))
	v.Name = e.Key.Name
	return writeJSON(w, http.StatusOK, v)
}

// keyView is a key's admin view: metadata and spend, never the hash.
func keyView(e *keys.Entry, now time.Time) adminapi.Key {
	k := e.Key
	u, reserved, inFlight := e.Usage(now)
	v := adminapi.Key{
		Name: k.Name, Source: k.Source, Status: "active", Pools: k.Pools, Models: k.Models,
		RPM: k.RPM, TPM: k.TPM, MaxParallel: k.MaxParallel, Budget: k.Budget, Period: string(k.BudgetPeriod()),
		Spent: u.Of(k.BudgetPeriod()).Spend, Reserved: reserved, InFlight: inFlight,
		Expires: timeOrNil(k.Expires), Created: timeOrNil(k.Created), Revoked: timeOrNil(k.Revoked),
		Day: usageView(keys.PeriodDay, u.Day), Month: usageView(keys.PeriodMonth, u.Month), Total: usageView(keys.PeriodTotal, u.Total),
	}
	switch {
	case !k.Revoked.IsZero():
		v.Status = "revoked"
	case !k.Expires.IsZero() && !now.Before(k.Expires):
		v.Status = "expired"
	}
	return v
}

func usageView(p keys.Period, t keys.Tally) adminapi.KeyUsage {
	return adminapi.KeyUsage{
		Period: string(p), PeriodID: t.Period, Requests: t.Requests, Errors: t.Errors,
		TokensIn: t.TokensIn, TokensOut: t.TokensOut, Estimated: t.Estimated, Spend: t.Spend, Seconds: t.Seconds,
	}
}

func timeOrNil(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}
