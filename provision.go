package vastai

import (
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-vastai/caddy-vastai/lifecycle"
)

// ProvisionConfig describes the instances a pool wants: what to run, on
// which offers, how many, and within which limits. Instances created for a
// pool are labelled "cv:<gateway_id>:<pool>:<operation>" at creation, get a
// generated per-instance token in WEB_PASSWORD (the pool's default token
// source then becomes "env WEB_PASSWORD"), and are recorded in Caddy's
// storage before vast.ai is called.
type ProvisionConfig struct {
	// Docker image to run; required unless template_hash_id is set.
	Image string `json:"image,omitempty"`

	// A vast.ai template instead of an image. Template hash ids change when
	// the template is edited; prefer pinning the image.
	TemplateHashID string `json:"template_hash_id,omitempty"`

	// Disk size in GB. It cannot change later and bills even while the
	// instance is stopped. Default: 10.
	Disk float64 `json:"disk,omitempty"`

	// Environment variables and Docker options (for example "-p 8000:8000":
	// "1"). The pool's engine port is requested automatically.
	Env map[string]string `json:"env,omitempty"`

	// The onstart script (SSH and Jupyter runtypes replace the image's
	// entrypoint, so the engine is started here).
	Onstart string `json:"onstart,omitempty"`

	// Entrypoint arguments, for runtype "args".
	Args []string `json:"args,omitempty"`

	// vast.ai runtype: "args", "ssh_direct", "ssh_proxy", "jupyter_direct"...
	Runtype string `json:"runtype,omitempty"`

	// Which offers may be rented.
	Offer *lifecycle.OfferFilter `json:"offer,omitempty"`

	// Offer order as [field, "asc"|"desc"] pairs. Default: cheapest
	// (dph_total) first.
	Order [][2]string `json:"order,omitempty"`

	// "on-demand" (default) or "bid" (interruptible, at bid_price; vast.ai
	// stops an outbid instance, and its disk keeps billing).
	Type string `json:"type,omitempty"`

	// The bid in $/hour for type "bid".
	BidPrice float64 `json:"bid_price,omitempty"`

	// Instances kept in the pool by reconciliation.
	MinInstances int `json:"min_instances,omitempty"`

	// Upper bound of the pool (0: none).
	MaxInstances int `json:"max_instances,omitempty"`

	// Highest price of one instance in $/hour (0: no cap).
	MaxPricePerHour float64 `json:"max_price_per_hour,omitempty"`

	// Instances older than this are replaced: the new one is made ready
	// first, then the old one drained and destroyed (0: never).
	MaxLifetime caddy.Duration `json:"max_lifetime,omitempty"`

	// How long an instance may stay in one start-up state (loading,
	// starting...) before it is destroyed and another offer tried.
	// Default: 30m.
	ReadyTimeout caddy.Duration `json:"ready_timeout,omitempty"`

	// Offers tried per provisioning before giving up. Default: 3.
	MaxAttempts int `json:"max_attempts,omitempty"`

	// Pool budget in $/hour: running instances plus creates in progress.
	MaxSpendPerHour float64 `json:"max_spend_per_hour,omitempty"`
}

// template converts the configuration for the lifecycle manager.
func (p *ProvisionConfig) template(port int, repl *caddy.Replacer) lifecycle.PoolTemplate {
	t := lifecycle.PoolTemplate{
		Image: p.Image, TemplateHashID: p.TemplateHashID, Disk: p.Disk, Onstart: p.Onstart,
		Args: p.Args, Runtype: p.Runtype, Order: p.Order, Type: p.Type, BidPrice: p.BidPrice,
		MinInstances: p.MinInstances, MaxInstances: p.MaxInstances, MaxPricePerHour: p.MaxPricePerHour,
		MaxLifetime: time.Duration(p.MaxLifetime), ReadyTimeout: time.Duration(p.ReadyTimeout),
		MaxAttempts: p.MaxAttempts, MaxSpendPerHour: p.MaxSpendPerHour,
		Env: map[string]string{},
	}
	// Values may hold placeholders such as {env.HF_TOKEN}: secrets stay
	// out of the config and are resolved when it is loaded.
	for k, v := range p.Env {
		t.Env[k] = repl.ReplaceAll(v, "")
	}
	// The engine port must be mapped or the instance is unreachable.
	if port == 0 {
		port = 8000
	}
	portKey := fmt.Sprintf("-p %d:%d", port, port)
	if _, ok := t.Env[portKey]; !ok {
		t.Env[portKey] = "1"
	}
	if p.Offer != nil {
		t.Offer = *p.Offer
	}
	return t
}
