package vastai

import (
	"errors"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// routeDecisions counts the vastai selection policies' decisions by pool,
// policy and reason. It lives in the state, so counts survive reloads, and
// the request path finds its counter in a sync.Map, without a lock.
type routeDecisions struct {
	once     sync.Once
	vec      *prometheus.CounterVec
	counters sync.Map // routeKey → prometheus.Counter
}

type routeKey struct{ pool, policy, reason string }

func (d *routeDecisions) init() {
	d.once.Do(func() {
		d.vec = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "caddy", Subsystem: "vastai", Name: "route_decisions_total",
			Help: "Decisions of the vastai selection policies, by reason: pinned, session, session_overflow, cache_hit, cache_miss, imbalanced, least_load, saturated; and of vastai_models (policy vastai_models): model, known, alias, default, unknown_model, missing_model, model_list_pending, no_ready_instance.",
		}, []string{"pool", "policy", "reason"})
	})
}

// decided counts one decision.
func (d *routeDecisions) decided(pool, policy, reason string) {
	k := routeKey{pool, policy, reason}
	if c, ok := d.counters.Load(k); ok {
		c.(prometheus.Counter).Inc()
		return
	}
	d.init()
	c, _ := d.counters.LoadOrStore(k, d.vec.WithLabelValues(pool, policy, reason))
	c.(prometheus.Counter).Inc()
}

// register adds the counter to a config's registry.
func (d *routeDecisions) register(reg *prometheus.Registry) error {
	if reg == nil {
		return nil
	}
	d.init()
	err := reg.Register(d.vec)
	var are prometheus.AlreadyRegisteredError
	if err != nil && !errors.As(err, &are) {
		return err
	}
	return nil
}
