package vastai

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func init() {
	caddy.RegisterModule(Upstreams{})
}

// Upstreams is a dynamic upstream source for reverse_proxy that returns the
// routable instances of a vastai pool. It is a snapshot read: no network
// I/O, no locks, and the returned upstreams are fresh values sorted by
// instance id (Caddy mutates them, and a stable order keeps round_robin and
// the hash policies fair).
//
// With pool "*" it returns the pool that a vastai_models handler before
// the proxy chose for the request from its model (models.go).
type Upstreams struct {
	// The name of the pool in the vastai app, or "*" for the pool the
	// vastai_models handler chose for each request. Required.
	Pool string `json:"pool,omitempty"`

	st *state
}

// ByModelPool is the pool name of the by-model mode.
const ByModelPool = "*"

// errNoPoolChoice is the by-model mode's error when no vastai_models
// handler ran before the proxy.
var errNoPoolChoice = errors.New(`vastai upstreams: pool "*" takes the pool chosen by the vastai_models handler, and none ran for this request: add vastai_models before the proxy`)

// CaddyModule returns the Caddy module information.
func (Upstreams) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.upstreams.vastai",
		New: func() caddy.Module { return new(Upstreams) },
	}
}

// Provision finds the vastai app and checks that the pool exists.
func (u *Upstreams) Provision(ctx caddy.Context) error {
	if u.Pool == "" {
		return errors.New("pool: a pool name is required")
	}
	app, err := lookupApp(ctx)
	if err != nil {
		return err
	}
	if _, ok := app.Pools[u.Pool]; !ok && u.Pool != ByModelPool {
		return fmt.Errorf("pool: %w %q (configured pools: %s)", ErrUnknownPool, u.Pool, app.poolNames())
	}
	u.st = app.state
	return nil
}

// GetUpstreams returns the pool's routable instances. An empty pool is an
// empty list, not an error: the request then gets a 503, or waits for an
// instance with lb_try_duration, without flooding the log. An empty
// autoscaled pool holds the request instead, while it wakes (hold.go).
//
// It allocates the result only: one array of Upstream values and the slice
// of pointers into it.
func (u *Upstreams) GetUpstreams(r *http.Request) ([]*reverseproxy.Upstream, error) {
	pool := u.Pool
	if pool == ByModelPool {
		var ok bool
		if pool, ok = chosenPool(r); !ok {
			return nil, errNoPoolChoice
		}
	}
	pv := u.st.watcher.Snapshot().Pools[pool]
	if pv == nil || len(pv.Targets) == 0 {
		// An autoscaled pool holds the request until an instance is
		// ready (hold.go); others answer at once.
		var rej *holdRejection
		if pv, rej = u.st.awaitInstance(r, pool); rej != nil {
			return rejectUpstreams(), nil
		}
		if pv == nil || len(pv.Targets) == 0 {
			return nil, nil
		}
	}
	vals := make([]reverseproxy.Upstream, len(pv.Targets))
	out := make([]*reverseproxy.Upstream, len(pv.Targets))
	for i, t := range pv.Targets {
		vals[i].Dial = t.Dial
		out[i] = &vals[i]
	}
	return out, nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Upstreams)(nil)
	_ reverseproxy.UpstreamSource = (*Upstreams)(nil)
)
