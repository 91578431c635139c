// Package tui is `caddy vastai top`: a live, full-screen view of the fleet
// read from the admin API, with keys to drain, destroy and provision.
//
// It knows the admin API only through the API interface, so it does not
// depend on Caddy; the CLI passes its admin client, tests a fake or a plain
// HTTP client.
package tui

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	tea "github.com/charmbracelet/bubbletea"

	"github.com/caddy-vastai/caddy-vastai/adminapi"
	"github.com/caddy-vastai/caddy-vastai/lifecycle"
)

// API is the admin API as the view needs it. Do sends one request (body
// encoded as JSON when not nil) and decodes the answer into out (when not
// nil). Errors for requests the admin API answered carry its message.
type API interface {
	Do(ctx context.Context, method, path string, body any, out any) error
}

// Options tune the view.
type Options struct {
	// Refresh is how often the view reloads; 0 means every second.
	Refresh time.Duration
	// Pool limits the view to one pool (and makes it the pool `p`
	// provisions into when no instance is selected).
	Pool string
}

// DefaultRefresh is the refresh interval when Options.Refresh is 0.
const DefaultRefresh = time.Second

// ErrNoAPI is returned by Run without an API to talk to.
var ErrNoAPI = errors.New("tui: no admin API client")

// Run shows the view until the operator quits (q or Ctrl-C) or ctx ends,
// and restores the terminal either way. An interrupted or cancelled view is
// not an error.
func Run(ctx context.Context, api API, opts Options) error {
	if api == nil {
		return ErrNoAPI
	}
	if opts.Refresh <= 0 {
		opts.Refresh = DefaultRefresh
	}
	p := tea.NewProgram(newModel(ctx, api, opts), tea.WithAltScreen(), tea.WithContext(ctx))
	_, err := p.Run()
	switch {
	case err == nil, errors.Is(err, tea.ErrInterrupted):
		return nil
	case errors.Is(err, tea.ErrProgramKilled) && ctx.Err() != nil:
		return nil
	}
	return fmt.Errorf("tui: %w", err)
}

// The admin API's shapes are adminapi's; the view adds only what the
// dashboard's snapshot event carries beside them.

// Status is GET /vastai/status, with the gateway's spend budget when the
// answer carries one.
type Status struct {
	adminapi.Status
	// MaxSpendPerHour is the gateway-wide budget, in $/h; nil when absent.
	MaxSpendPerHour *float64 `json:"max_spend_per_hour"`
}

// Instance is one entry of GET /vastai/instances; requests/s is derived
// from RequestsTotal between refreshes.
type Instance struct {
	adminapi.Instance
}

// snapshot is one refresh: every part that loaded, and the error of every
// part that did not (the view keeps showing the previous value then).
type snapshot struct {
	at         time.Time
	status     *Status
	instances  []Instance
	pools      []adminapi.Pool
	operations []lifecycle.Operation
	// keys is GET /vastai/keys, asked for only while the keys panel is
	// open (withKeys).
	keys     []adminapi.Key
	withKeys bool
	errs     map[string]error // by part: status, instances, pools, operations, keys
}

// dataMsg carries a finished refresh into Update.
type dataMsg snapshot

// fetchTimeout bounds one refresh, so a hung admin API turns into an error
// shown on screen rather than a view that silently stops changing.
const fetchTimeout = 10 * time.Second

// fetch loads the four parts (five with the keys) in a tea.Cmd: Update
// never waits for the admin API.
func fetch(ctx context.Context, api API, now func() time.Time, withKeys bool) tea.Cmd {
	return func() tea.Msg {
		ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
		defer cancel()
		s := snapshot{errs: map[string]error{}}
		var st Status
		if err := api.Do(ctx, "GET", "/vastai/status", nil, &st); err != nil {
			s.errs["status"] = err
		} else {
			s.status = &st
		}
		if err := api.Do(ctx, "GET", "/vastai/instances", nil, &s.instances); err != nil {
			s.errs["instances"] = err
			s.instances = nil
		}
		if err := api.Do(ctx, "GET", "/vastai/pools", nil, &s.pools); err != nil {
			s.errs["pools"] = err
			s.pools = nil
		}
		if err := api.Do(ctx, "GET", "/vastai/operations", nil, &s.operations); err != nil {
			s.errs["operations"] = err
			s.operations = nil
		}
		if s.withKeys = withKeys; withKeys {
			if err := api.Do(ctx, "GET", "/vastai/keys", nil, &s.keys); err != nil {
				s.errs["keys"] = err
				s.keys = nil
			}
		}
		s.at = now()
		return dataMsg(s)
	}
}

// action is a change the operator confirmed.
type action struct {
	kind string // drain, destroy, provision
	id   int64
	pool string
}

func (a action) prompt() string {
	switch a.kind {
	case "drain":
		return fmt.Sprintf("Drain instance %d (pool %s): stop routing to it, then destroy it? [y/n]", a.id, orDash(a.pool))
	case "destroy":
		return fmt.Sprintf("Destroy instance %d (pool %s) now, cutting requests in flight? [y/n]", a.id, orDash(a.pool))
	default:
		return fmt.Sprintf("Provision one more instance into pool %s? [y/n]", a.pool)
	}
}

// actionMsg is the admin API's answer to a confirmed action.
type actionMsg struct {
	act action
	err error
}

func run(ctx context.Context, api API, a action) tea.Cmd {
	return func() tea.Msg {
		ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
		defer cancel()
		var err error
		switch a.kind {
		case "drain":
			err = api.Do(ctx, "POST", fmt.Sprintf("/vastai/instances/%d/drain", a.id), nil, nil)
		case "destroy":
			err = api.Do(ctx, "DELETE", fmt.Sprintf("/vastai/instances/%d", a.id), nil, nil)
		case "provision":
			err = api.Do(ctx, "POST", "/vastai/pools/"+url.PathEscape(a.pool)+"/instances", map[string]int{"count": 1}, nil)
		}
		return actionMsg{act: a, err: err}
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
