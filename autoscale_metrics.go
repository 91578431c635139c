package vastai

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// autoscaleCollector exports each autoscaled pool's latest decision and
// hold at scrape time (wire_autoscale.go, hold.go); the request path pays
// nothing for it.
type autoscaleCollector struct {
	st                                                   *state
	desired, ready, load, panicking, held, sent, refused *prometheus.Desc
	warm, warmRate                                       *prometheus.Desc
}

func (s *state) registerAutoscaleMetrics(reg *prometheus.Registry) error {
	if reg == nil {
		return nil
	}
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("caddy_vastai_autoscale_"+name, help, append([]string{"pool"}, labels...), nil)
	}
	c := &autoscaleCollector{st: s,
		desired:   d("desired_instances", "The instance count the autoscaler wants for the pool now."),
		ready:     d("ready_instances", "The pool's ready (routable) instances at the latest decision."),
		load:      d("load", "Average load (in-flight plus engine-waiting plus held requests) over the stable or panic window.", "window"),
		panicking: d("panicking", "1 while a burst blocks scale-down (panic window), else 0."),
		held:      d("held_requests", "Requests held now because the pool has no ready instance."),
		sent:      d("held_requests_sent_total", "Held requests sent on to an instance once one was ready."),
		refused:   d("held_requests_refused_total", "Requests answered 503 capacity_unavailable, by reason (max_pending, max_wait).", "reason"),
		warm:      d("stopped_instances", "Stopped instances kept in the pool's warm pool."),
		warmRate:  d("stopped_dollars_per_hour", "What the warm pool's stopped instances bill (storage), in $/hour."),
	}
	err := reg.Register(c)
	var are prometheus.AlreadyRegisteredError
	if err != nil && !errors.As(err, &are) {
		return fmt.Errorf("registering autoscale metrics: %w", err)
	}
	return nil
}

// Describe implements prometheus.Collector.
func (c *autoscaleCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.desired, c.ready, c.load, c.panicking, c.held, c.sent, c.refused, c.warm, c.warmRate} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *autoscaleCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.st.scalers.Load()
	if m == nil {
		return
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for _, sc := range sortedScalers(*m) {
		v := c.st.autoscaleView(sc.pool)
		gauge(c.desired, float64(v.Desired), sc.pool)
		gauge(c.ready, float64(v.Current), sc.pool)
		gauge(c.load, v.StableLoad, sc.pool, "stable")
		gauge(c.load, v.PanicLoad, sc.pool, "panic")
		gauge(c.panicking, boolFloat(v.Panicking), sc.pool)
		gauge(c.held, float64(v.Held), sc.pool)
		ch <- prometheus.MustNewConstMetric(c.sent, prometheus.CounterValue, float64(v.HeldTotal), sc.pool)
		for _, reason := range holdReasonNames {
			ch <- prometheus.MustNewConstMetric(c.refused, prometheus.CounterValue, float64(v.Rejected[reason]), sc.pool, reason)
		}
		if v.Scale != nil {
			gauge(c.warm, float64(v.Scale.Stopped), sc.pool)
			gauge(c.warmRate, v.Scale.StoppedRate, sc.pool)
		}
	}
}

// Interface guards
var _ prometheus.Collector = (*autoscaleCollector)(nil)
