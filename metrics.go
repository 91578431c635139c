package vastai

import (
	"errors"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-vastai/caddy-vastai/fleet"
)

// collector exports the fleet snapshot as Prometheus metrics. It reads the
// snapshot at scrape time, so the request path pays nothing for metrics.
// Label values are pool names, instance ids and a bounded set of statuses:
// never tokens or keys.
type collector struct {
	w   *fleet.Watcher
	ssh func() *sshRuntime
	lc  func() *lifecycleRuntime
	st  *state

	instances      *prometheus.Desc
	routable       *prometheus.Desc
	price          *prometheus.Desc
	poolRoutable   *prometheus.Desc
	probeFailing   *prometheus.Desc
	lastSuccess    *prometheus.Desc
	failures       *prometheus.Desc
	stale          *prometheus.Desc
	watcherRunning *prometheus.Desc
	authFailed     *prometheus.Desc
	listingSecs    *prometheus.Desc
	dataAge        *prometheus.Desc
	gpuUtil        *prometheus.Desc
	gpuMemUsed     *prometheus.Desc
	gpuMemTotal    *prometheus.Desc
	gpuTemp        *prometheus.Desc
	gpuPower       *prometheus.Desc
	sshPath        *prometheus.Desc
	accrued        *prometheus.Desc
	poolSpend      *prometheus.Desc
	destroyFailed  *prometheus.Desc
	lcCounters     *prometheus.Desc
	inFlight       *prometheus.Desc
	engWaiting     *prometheus.Desc
	engRunning     *prometheus.Desc
	engKV          *prometheus.Desc
	engFresh       *prometheus.Desc
	prefixEntries  *prometheus.Desc
}

func newCollector(st *state) *collector {
	const ns, sub = "caddy", "vastai"
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(ns, sub, name), help, labels, nil)
	}
	return &collector{
		w:              st.watcher,
		ssh:            st.ssh.Load,
		lc:             st.lifecycle.Load,
		st:             st,
		inFlight:       d("instance_in_flight_requests", "Requests the gateway has in flight to the instance now.", "pool", "instance"),
		engWaiting:     d("engine_waiting_requests", "Requests queued in the instance's engine, from its last readable metrics page.", "pool", "instance"),
		engRunning:     d("engine_running_requests", "Requests in the instance's engine's running batch, from its last readable metrics page.", "pool", "instance"),
		engKV:          d("engine_kv_cache_usage_ratio", "Fraction of the engine's KV cache in use, 0 to 1 (engines that report it).", "pool", "instance"),
		prefixEntries:  d("prefix_index_entries", "Prompt-block hashes held by the vastai_cache_aware prefix index, per pool (bounded by entries_per_instance per instance).", "pool"),
		engFresh:       d("engine_metrics_fresh", "1 while the engine's figures are recent enough (stale_after) to route on, else 0.", "pool", "instance"),
		accrued:        d("instance_accrued_dollars", "What the instance has cost since its start_date at its current rate.", "pool", "instance"),
		poolSpend:      d("pool_spend_dollars_per_hour", "Current spend rate of the pool's instances.", "pool"),
		destroyFailed:  d("destroy_failed_instances", "Instances whose destruction could not be confirmed after the verification attempts; they may still bill. Alert on > 0."),
		lcCounters:     d("lifecycle_events_total", "Lifecycle events since start: provisions, destroys, orphans, ghosts, budget refusals, reconciles.", "event"),
		gpuUtil:        d("gpu_utilization_ratio", "GPU utilization from nvidia-smi, 0 to 1.", "pool", "instance", "gpu"),
		gpuMemUsed:     d("gpu_memory_used_bytes", "GPU memory in use from nvidia-smi.", "pool", "instance", "gpu"),
		gpuMemTotal:    d("gpu_memory_total_bytes", "GPU memory size from nvidia-smi.", "pool", "instance", "gpu"),
		gpuTemp:        d("gpu_temperature_celsius", "GPU temperature from nvidia-smi.", "pool", "instance", "gpu"),
		gpuPower:       d("gpu_power_watts", "GPU power draw from nvidia-smi.", "pool", "instance", "gpu"),
		sshPath:        d("ssh_path", "1 for the SSH path in use to the instance (direct, proxy or down).", "pool", "instance", "path"),
		instances:      d("instances", "Known instances by pool and health state (provisioning, loading, starting, ready, unhealthy, failed, stopped, gone).", "pool", "state"),
		routable:       d("instance_routable", "1 if the instance receives traffic, else 0.", "pool", "instance"),
		price:          d("instance_price_dollars_per_hour", "The instance's dph_total in USD per hour.", "pool", "instance"),
		poolRoutable:   d("pool_routable_instances", "Routable instances per pool.", "pool"),
		probeFailing:   d("pool_probe_failing", "1 while every instance of the pool fails its health probe although vast.ai reports it running (kept, not replaced).", "pool"),
		lastSuccess:    d("watch_last_success_timestamp_seconds", "Unix time of the last successful instance listing."),
		failures:       d("watch_consecutive_failures", "Failed instance listings since the last success."),
		stale:          d("watch_stale_seconds", "Seconds since the last successful listing (or since the first attempt if none succeeded) while listings fail, else 0."),
		watcherRunning: d("watchers_running", "Number of running watcher loops (1 when healthy)."),
		authFailed:     d("api_auth_failed", "1 while vast.ai rejects the API key (auth_error), else 0."),
		listingSecs:    d("listing_duration_seconds", "How long the last successful full listing of the account took (all pages, paced at 1 request/s)."),
		dataAge:        d("routing_data_age_seconds", "Age of the oldest routing data: seconds since the last successful listing started."),
	}
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.instances, c.routable, c.price, c.poolRoutable, c.lastSuccess, c.failures, c.stale, c.watcherRunning,
		c.authFailed, c.listingSecs, c.dataAge, c.gpuUtil, c.gpuMemUsed, c.gpuMemTotal, c.gpuTemp, c.gpuPower, c.sshPath, c.accrued, c.poolSpend, c.destroyFailed, c.lcCounters, c.probeFailing,
		c.inFlight, c.engWaiting, c.engRunning, c.engKV, c.engFresh, c.prefixEntries} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	snap := c.w.Snapshot()
	type key struct{ pool, state string }
	counts := map[key]int{}
	spend := map[string]float64{}
	now := time.Now()
	for _, m := range snap.Members {
		counts[key{m.Pool, m.State}]++
		id := strconv.FormatInt(m.Instance.ID, 10)
		rate, accrued := instanceCost(&m.Instance, now)
		spend[m.Pool] += rate
		ch <- prometheus.MustNewConstMetric(c.accrued, prometheus.GaugeValue, accrued, m.Pool, id)
		ch <- prometheus.MustNewConstMetric(c.routable, prometheus.GaugeValue, boolFloat(m.Routable), m.Pool, id)
		ch <- prometheus.MustNewConstMetric(c.price, prometheus.GaugeValue, m.Instance.DPHTotal, m.Pool, id)
	}
	c.collectTraffic(ch, snap)
	c.collectPrefixes(ch)
	if rt := c.ssh(); rt != nil {
		for _, m := range snap.Members {
			if m.Pool != "" {
				c.collectSSH(ch, rt, m.Pool, m.Instance.ID)
			}
		}
	}
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(c.instances, prometheus.GaugeValue, float64(n), k.pool, k.state)
	}
	for name, pv := range snap.Pools {
		ch <- prometheus.MustNewConstMetric(c.poolRoutable, prometheus.GaugeValue, float64(len(pv.Targets)), name)
		ch <- prometheus.MustNewConstMetric(c.poolSpend, prometheus.GaugeValue, spend[name], name)
	}
	if rt := c.lc(); rt != nil {
		st := rt.mgr.Stats()
		ch <- prometheus.MustNewConstMetric(c.destroyFailed, prometheus.GaugeValue, float64(st.DestroyFailedNow))
		for name := range snap.Pools {
			ch <- prometheus.MustNewConstMetric(c.probeFailing, prometheus.GaugeValue, boolFloat(rt.mgr.ProbeFailing(name)), name)
		}
		for event, n := range map[string]uint64{
			"provision_started": st.ProvisionsStarted, "provision_succeeded": st.ProvisionsSucceeded, "provision_failed": st.ProvisionsFailed,
			"attempt_failed": st.AttemptsFailed, "destroy_confirmed": st.DestroysConfirmed, "destroy_failed": st.DestroyFailed,
			"orphan_adopted": st.OrphansAdopted, "orphan_destroyed": st.OrphansDestroyed, "ghost": st.Ghosts, "duplicate_destroyed": st.DuplicatesDestroyed,
			"budget_refusal": st.BudgetRefusals, "reconcile": st.Reconciles, "reconcile_error": st.ReconcileErrors,
		} {
			ch <- prometheus.MustNewConstMetric(c.lcCounters, prometheus.CounterValue, float64(n), event)
		}
	}
	var last float64
	if !snap.Poll.LastSuccess.IsZero() {
		last = float64(snap.Poll.LastSuccess.UnixNano()) / 1e9
	}
	ch <- prometheus.MustNewConstMetric(c.lastSuccess, prometheus.GaugeValue, last)
	ch <- prometheus.MustNewConstMetric(c.failures, prometheus.GaugeValue, float64(snap.Poll.ConsecutiveFailures))
	ch <- prometheus.MustNewConstMetric(c.stale, prometheus.GaugeValue, snap.Poll.Stale(now).Seconds())
	ch <- prometheus.MustNewConstMetric(c.watcherRunning, prometheus.GaugeValue, float64(c.w.Running()))
	ch <- prometheus.MustNewConstMetric(c.authFailed, prometheus.GaugeValue, boolFloat(snap.Poll.AuthError))
	if !snap.Poll.NeverSucceeded() {
		ch <- prometheus.MustNewConstMetric(c.listingSecs, prometheus.GaugeValue, snap.Poll.ListingDuration.Seconds())
	}
	if age, ok := snap.Poll.DataAge(now); ok {
		ch <- prometheus.MustNewConstMetric(c.dataAge, prometheus.GaugeValue, age.Seconds())
	}
}

// collectPrefixes exports the size of each pool's prefix index.
func (c *collector) collectPrefixes(ch chan<- prometheus.Metric) {
	perPool := map[string]int{}
	c.st.prefixes.Range(func(k, v any) bool {
		n, _ := v.(*prefixIndexEntry).idx.Entries()
		perPool[k.(prefixIndexKey).pool] += n
		return true
	})
	for pool, n := range perPool {
		ch <- prometheus.MustNewConstMetric(c.prefixEntries, prometheus.GaugeValue, float64(n), pool)
	}
}

// collectTraffic exports the in-flight counts and the engines' figures of
// the pools' members.
func (c *collector) collectTraffic(ch chan<- prometheus.Metric, snap *fleet.Snapshot) {
	for _, m := range snap.Members {
		if m.Pool == "" {
			continue
		}
		id := strconv.FormatInt(m.Instance.ID, 10)
		if c.st.inflight.loads.Tracks(m.Instance.ID) {
			ch <- prometheus.MustNewConstMetric(c.inFlight, prometheus.GaugeValue, float64(c.st.inflight.count(m.Instance.ID)), m.Pool, id)
		}
		r, ok := c.st.engineResult(m.Instance.ID)
		if !ok {
			continue
		}
		_, fresh := c.st.engineState(m.Instance.ID)
		ch <- prometheus.MustNewConstMetric(c.engFresh, prometheus.GaugeValue, boolFloat(fresh), m.Pool, id)
		if !r.OK {
			continue
		}
		ch <- prometheus.MustNewConstMetric(c.engWaiting, prometheus.GaugeValue, r.State.Waiting, m.Pool, id)
		ch <- prometheus.MustNewConstMetric(c.engRunning, prometheus.GaugeValue, r.State.Running, m.Pool, id)
		if r.State.HasKVCacheUse() {
			ch <- prometheus.MustNewConstMetric(c.engKV, prometheus.GaugeValue, r.State.KVCacheUse, m.Pool, id)
		}
	}
}

func (c *collector) collectSSH(ch chan<- prometheus.Metric, rt *sshRuntime, pool string, id int64) {
	inst := strconv.FormatInt(id, 10)
	ch <- prometheus.MustNewConstMetric(c.sshPath, prometheus.GaugeValue, 1, pool, inst, rt.pool.Status(id).Path)
	sample, ok := rt.collector.Sample(id)
	if !ok {
		return
	}
	const mib = 1 << 20
	for _, g := range sample.GPUs {
		gpu := strconv.Itoa(g.Index)
		gauge := func(d *prometheus.Desc, v *float64, scale float64) {
			if v != nil {
				ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, *v*scale, pool, inst, gpu)
			}
		}
		gauge(c.gpuUtil, g.UtilizationGPU, 0.01)
		gauge(c.gpuMemUsed, g.MemoryUsedMiB, mib)
		gauge(c.gpuMemTotal, g.MemoryTotalMiB, mib)
		gauge(c.gpuTemp, g.TemperatureC, 1)
		gauge(c.gpuPower, g.PowerDrawW, 1)
	}
}

// register adds the collector to a config's registry. Caddy creates a new
// registry for every config load, so this runs on every Provision; a
// registry that already has it is fine.
func (c *collector) register(reg *prometheus.Registry) error {
	if reg == nil {
		return nil
	}
	err := reg.Register(c)
	var are prometheus.AlreadyRegisteredError
	if err != nil && !errors.As(err, &are) {
		return err
	}
	return nil
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Interface guards
var _ prometheus.Collector = (*collector)(nil)
