package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/caddy-vastai/caddy-vastai/adminapi"
	"github.com/caddy-vastai/caddy-vastai/fleet"
	"github.com/caddy-vastai/caddy-vastai/internal/display"
	"github.com/caddy-vastai/caddy-vastai/lifecycle"
)

// getRaw fetches path and decodes it into out, returning the raw answer
// too for --json.
func getRaw(ctx context.Context, a *Admin, path string, out any) ([]byte, error) {
	var raw []byte
	if err := a.Get(ctx, path, &raw); err != nil {
		return nil, err
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return nil, fmt.Errorf("GET %s: the admin API's answer is not the expected JSON: %w", path, err)
	}
	return raw, nil
}

func (e *env) statusCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "status",
		Short:   "Show the fleet watcher's health and the fleet's size",
		Example: "  caddy vastai status\n  caddy vastai status --json | jq .stale_seconds",
		Args:    e.exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return e.call(cmd, func(ctx context.Context, a *Admin) error {
				var st adminapi.Status
				raw, err := getRaw(ctx, a, "/vastai/status", &st)
				if err != nil {
					return err
				}
				if e.jsonOut {
					return e.printJSON(raw)
				}
				now := time.Now()
				kv := [][2]string{
					{"Instances", strconv.Itoa(st.Instances)},
					{"Last listing", agoOr(st.LastSuccess, now)},
					{"Stale for", display.Duration(time.Duration(st.StaleSeconds * float64(time.Second)))},
					{"Failed listings", strconv.Itoa(st.ConsecutiveFailures)},
					{"Skipped rows", strconv.Itoa(st.SkippedRows)},
					{"Watchers", strconv.Itoa(st.WatchersRunning)},
					{"Generation", strconv.FormatUint(st.Generation, 10)},
				}
				if st.SpendPerHour != nil {
					kv = append(kv, [2]string{"Spend", display.Rate(*st.SpendPerHour)})
				}
				if st.LastError != "" {
					kv = append(kv, [2]string{"Last error", st.LastError})
				}
				e.fields(kv, "")
				return nil
			})
		},
	}
}

func (e *env) instancesCmd() *cobra.Command {
	var pool, state string
	cmd := &cobra.Command{
		Use:     "instances",
		Aliases: []string{"ls"},
		Short:   "List the instances the gateway sees, with state, price and upstream",
		Example: "  caddy vastai ls\n  caddy vastai instances --pool llm --state ready\n  caddy vastai ls --json | jq '.[].id'",
		Args:    e.exactArgs(0, "no arguments (filter with --pool and --state)"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if state != "" && !slices.Contains(instanceStates, state) {
				return usagef("--state: %q is not a state; use one of %s", state, strings.Join(instanceStates, ", "))
			}
			return e.call(cmd, func(ctx context.Context, a *Admin) error {
				var raws []json.RawMessage
				if _, err := getRaw(ctx, a, "/vastai/instances", &raws); err != nil {
					return err
				}
				var keep []json.RawMessage
				var list []adminapi.Instance
				for _, r := range raws {
					var v adminapi.Instance
					if err := json.Unmarshal(r, &v); err != nil {
						return fmt.Errorf("GET /vastai/instances: an instance is not the expected JSON: %w", err)
					}
					if (pool == "" || (v.Pool != nil && *v.Pool == pool)) && (state == "" || v.State == state) {
						keep, list = append(keep, r), append(list, v)
					}
				}
				if e.jsonOut {
					if keep == nil {
						keep = []json.RawMessage{}
					}
					b, _ := json.Marshal(keep)
					return e.printJSON(b)
				}
				e.instancesTable(list)
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&pool, "pool", "", "only instances of this pool")
	cmd.Flags().StringVar(&state, "state", "", "only instances in this state ("+strings.Join(instanceStates, ", ")+")")
	return cmd
}

// instanceStates are the routing side's states, for --state.
var instanceStates = []string{
	fleet.StateProvisioning, fleet.StateLoading, fleet.StateStarting, fleet.StateReady,
	fleet.StateUnhealthy, fleet.StateFailed, fleet.StateStopped, fleet.StateGone,
}

func (e *env) instancesTable(list []adminapi.Instance) {
	if len(list) == 0 {
		fmt.Fprintln(e.io.Out, "No instances.")
		return
	}
	sort.Slice(list, func(i, j int) bool { return list[i].ID < list[j].ID })
	now := time.Now()
	rows := make([][]string, 0, len(list))
	for _, v := range list {
		rows = append(rows, []string{
			strconv.FormatInt(v.ID, 10), strOr(v.Pool), v.State, sinceOr(v.StateSince, now),
			strOr(v.ActualStatus), gpus(v.NumGPUs, v.GPUName), display.Rate(v.DPHTotal),
			display.Dollars(v.Accrued), strOr(v.Upstream),
		})
	}
	e.table([]string{"ID", "POOL", "STATE", "FOR", "STATUS", "GPUS", "PRICE", "ACCRUED", "UPSTREAM"}, rows, 2)
}

// parseID reads an instance id argument.
func parseID(s string) (int64, error) {
	id, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || id <= 0 {
		return 0, usagef("instance id %q is not a positive integer", s)
	}
	return id, nil
}

func (e *env) instanceCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "instance <id>",
		Short:   "Show one instance: state, probe, SSH path, GPUs and cost",
		Example: "  caddy vastai instance 123456\n  caddy vastai instance 123456 --json",
		Args:    e.exactArgs(1, "an instance id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseID(args[0])
			if err != nil {
				return err
			}
			return e.call(cmd, func(ctx context.Context, a *Admin) error {
				var v adminapi.Instance
				raw, err := getRaw(ctx, a, "/vastai/instances/"+strconv.FormatInt(id, 10), &v)
				if err != nil {
					return err
				}
				if e.jsonOut {
					return e.printJSON(raw)
				}
				e.instanceDetail(v)
				return nil
			})
		},
	}
}

func (e *env) instanceDetail(v adminapi.Instance) {
	now := time.Now()
	kv := [][2]string{
		{"ID", strconv.FormatInt(v.ID, 10)},
		{"Pool", strOr(v.Pool)},
		{"Label", textOr(v.Label)},
		{"State", v.State},
		{"In state for", sinceOr(v.StateSince, now)},
		{"Routable", strconv.FormatBool(v.Routable)},
		{"vast.ai status", strOr(v.ActualStatus)},
		{"Upstream", strOr(v.Upstream)},
		{"GPUs", gpus(v.NumGPUs, v.GPUName)},
		{"Price", display.Rate(v.DPHTotal)},
		{"Accrued", display.Dollars(v.Accrued)},
		{"Running for", sinceOr(v.StartDate, now)},
	}
	if v.Reason != "" {
		kv = append(kv, [2]string{"Reason", v.Reason})
	}
	if v.StatusMsg != "" {
		kv = append(kv, [2]string{"Status message", v.StatusMsg})
	}
	if p := v.LastProbe; p != nil {
		probe := fmt.Sprintf("%s ago, ok=%t, %.0fms", display.Since(p.Time, now), p.OK, p.LatencyMS)
		if p.Status != 0 {
			probe += fmt.Sprintf(", HTTP %d", p.Status)
		}
		if p.Error != "" {
			probe += ", " + p.Error
		}
		kv = append(kv, [2]string{"Last probe", probe})
	}
	if v.SSH != nil {
		kv = append(kv, [2]string{"SSH path", textOr(v.SSH.Path)})
		if v.SSH.LastError != "" {
			kv = append(kv, [2]string{"SSH error", v.SSH.LastError})
		}
	}
	if v.GPUError != "" {
		kv = append(kv, [2]string{"GPU error", v.GPUError})
	}
	e.fields(kv, "State")
	if len(v.GPUs) > 0 {
		fmt.Fprintln(e.io.Out)
		rows := make([][]string, 0, len(v.GPUs))
		for _, g := range v.GPUs {
			mem := "-"
			if g.MemoryUsedMiB != nil && g.MemoryTotalMiB != nil {
				mem = fmt.Sprintf("%.1f/%.1f GiB", *g.MemoryUsedMiB/1024, *g.MemoryTotalMiB/1024)
			}
			util := "-"
			if g.UtilizationGPU != nil {
				util = display.Percent(*g.UtilizationGPU)
			}
			rows = append(rows, []string{strconv.Itoa(g.Index), textOr(g.Name), util, mem, numOr(g.TemperatureC, "%.0f°C"), numOr(g.PowerDrawW, "%.0fW")})
		}
		e.table([]string{"GPU", "NAME", "UTIL", "MEMORY", "TEMP", "POWER"}, rows, -1)
	}
}

func (e *env) poolsCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "pools",
		Short:   "List the pools with their members, states and spend rate",
		Example: "  caddy vastai pools\n  caddy vastai pools --json",
		Args:    e.exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return e.call(cmd, func(ctx context.Context, a *Admin) error {
				var pools []adminapi.Pool
				raw, err := getRaw(ctx, a, "/vastai/pools", &pools)
				if err != nil {
					return err
				}
				if e.jsonOut {
					return e.printJSON(raw)
				}
				if len(pools) == 0 {
					fmt.Fprintln(e.io.Out, "No pools are configured.")
					return nil
				}
				rows := make([][]string, 0, len(pools))
				for _, p := range pools {
					rate := p.SpendRate
					if p.SpendPerHour != nil {
						rate = *p.SpendPerHour
					}
					limits := "-"
					if pr := p.Provisioning; pr != nil {
						limits = fmt.Sprintf("min %d, max %s, %d in progress", pr.MinInstances, maxOr(pr.MaxInstances), pr.InProgress)
					}
					rows = append(rows, []string{
						p.Name, strconv.Itoa(len(p.Members)), strconv.Itoa(len(p.Routable)), states(p.States),
						display.Rate(rate), display.Dollars(p.Accrued), limits, autoscaleCell(p.Autoscale),
					})
				}
				e.table([]string{"POOL", "MEMBERS", "ROUTABLE", "STATES", "SPEND", "ACCRUED", "PROVISIONING", "AUTOSCALE"}, rows, -1)
				return nil
			})
		},
	}
}

func maxOr(n int) string {
	if n == 0 {
		return "none"
	}
	return strconv.Itoa(n)
}

// states formats a state count map as "ready=2 loading=1", sorted.
func states(m map[string]int) string {
	if len(m) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, m[k])
	}
	return strings.Join(parts, " ")
}

// offerFlags are the filters /vastai/offers accepts, by query name.
type offerFlags struct {
	pool, gpuName, countries              string
	numGPUs, limit, minDirectPorts        int
	maxDPH, minGPURAM, minReliab, minCUDA float64
	verified                              bool
}

func (f *offerFlags) query(cmd *cobra.Command) url.Values {
	q := url.Values{"pool": {f.pool}}
	set := func(flag, key, val string) {
		if cmd.Flags().Changed(flag) {
			q.Set(key, val)
		}
	}
	set("gpu-name", "gpu_name", f.gpuName)
	set("num-gpus", "num_gpus", strconv.Itoa(f.numGPUs))
	set("limit", "limit", strconv.Itoa(f.limit))
	set("min-direct-ports", "min_direct_ports", strconv.Itoa(f.minDirectPorts))
	set("max-price", "max_dph", strconv.FormatFloat(f.maxDPH, 'f', -1, 64))
	set("min-gpu-ram", "min_gpu_ram", strconv.FormatFloat(f.minGPURAM, 'f', -1, 64))
	set("min-reliability", "min_reliability", strconv.FormatFloat(f.minReliab, 'f', -1, 64))
	set("min-cuda", "min_cuda", strconv.FormatFloat(f.minCUDA, 'f', -1, 64))
	set("countries", "countries", f.countries)
	if f.verified {
		q.Set("verified", "true")
	}
	return q
}

func (f *offerFlags) validate() error {
	for name, v := range map[string]float64{"--max-price": f.maxDPH, "--min-gpu-ram": f.minGPURAM, "--min-reliability": f.minReliab, "--min-cuda": f.minCUDA} {
		if v < 0 {
			return usagef("%s: %v must not be negative", name, v)
		}
	}
	for name, v := range map[string]int{"--num-gpus": f.numGPUs, "--limit": f.limit, "--min-direct-ports": f.minDirectPorts} {
		if v < 0 {
			return usagef("%s: %d must not be negative", name, v)
		}
	}
	if f.minReliab > 1 {
		return usagef("--min-reliability: %v is above 1 (reliability is a fraction, e.g. 0.95)", f.minReliab)
	}
	return nil
}

func (e *env) offersCmd() *cobra.Command {
	f := &offerFlags{}
	cmd := &cobra.Command{
		Use:   "offers [--pool NAME] [filters]",
		Short: "Search vast.ai offers with a pool's filters (and overrides)",
		Long: `Search vast.ai offers the way a pool's provisioning would, optionally
overriding its filters. Without --pool, the only pool with a provision
block is used.`,
		Example: "  caddy vastai offers --pool llm\n  caddy vastai offers --pool llm --gpu-name 'RTX 5090' --max-price 1.5 --countries US,CA",
		Args:    e.exactArgs(0, "no arguments (use --pool and filter flags)"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.validate(); err != nil {
				return err
			}
			return e.call(cmd, func(ctx context.Context, a *Admin) error {
				if f.pool == "" {
					p, err := onlyProvisionedPool(ctx, a)
					if err != nil {
						return err
					}
					f.pool = p
				}
				var offers []offerView
				raw, err := getRaw(ctx, a, "/vastai/offers?"+f.query(cmd).Encode(), &offers)
				if err != nil {
					return err
				}
				if e.jsonOut {
					return e.printJSON(raw)
				}
				e.offersTable(offers)
				return nil
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.pool, "pool", "", "pool whose provisioning filters to use")
	fl.StringVar(&f.gpuName, "gpu-name", "", `GPU model as vast.ai spells it ("RTX 4090")`)
	fl.IntVar(&f.numGPUs, "num-gpus", 0, "exact number of GPUs")
	fl.Float64Var(&f.maxDPH, "max-price", 0, "highest price in $/h, storage included")
	fl.Float64Var(&f.minGPURAM, "min-gpu-ram", 0, "minimum memory per GPU in GB")
	fl.Float64Var(&f.minReliab, "min-reliability", 0, "minimum reliability (0-1)")
	fl.Float64Var(&f.minCUDA, "min-cuda", 0, "minimum CUDA version")
	fl.IntVar(&f.minDirectPorts, "min-direct-ports", 0, "minimum number of direct ports")
	fl.StringVar(&f.countries, "countries", "", "two-letter country codes, comma separated (US,CA)")
	fl.BoolVar(&f.verified, "verified", false, "only verified machines")
	fl.IntVar(&f.limit, "limit", 0, "at most this many offers")
	return cmd
}

// onlyProvisionedPool returns the pool with a provision block when there
// is exactly one, and a usage error naming the choices otherwise.
func onlyProvisionedPool(ctx context.Context, a *Admin) (string, error) {
	var pools []adminapi.Pool
	if err := a.Get(ctx, "/vastai/pools", &pools); err != nil {
		return "", err
	}
	var names []string
	for _, p := range pools {
		if p.Provisioning != nil {
			names = append(names, p.Name)
		}
	}
	switch len(names) {
	case 1:
		return names[0], nil
	case 0:
		return "", usagef("--pool: no pool has a provision block, so there are no offer filters to use")
	}
	return "", usagef("--pool is required: choose one of %s", strings.Join(names, ", "))
}

func (e *env) offersTable(offers []offerView) {
	if len(offers) == 0 {
		fmt.Fprintln(e.io.Out, "No offers match.")
		return
	}
	rows := make([][]string, 0, len(offers))
	for _, o := range offers {
		rows = append(rows, []string{
			strconv.FormatInt(o.ID, 10), gpus(o.NumGPUs, o.GPUName), display.GiB(o.GPURAM),
			display.Rate(o.DPHTotal), fmt.Sprintf("%.3f", o.Reliability2), textOr(o.Verification),
			textOr(o.Geolocation), fmt.Sprintf("%.1f", o.CUDAMaxGood), strconv.FormatInt(o.MachineID, 10),
		})
	}
	e.table([]string{"OFFER", "GPUS", "VRAM", "PRICE", "RELIABILITY", "VERIFIED", "LOCATION", "CUDA", "MACHINE"}, rows, -1)
}

func (e *env) operationsCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "operations [id]",
		Aliases: []string{"ops"},
		Short:   "List provisioning and destroy operations, or show one with its attempts",
		Example: "  caddy vastai ops\n  caddy vastai operations 3f2a9c01de",
		Args:    e.maxArgs(1, "one operation id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return e.call(cmd, func(ctx context.Context, a *Admin) error {
				if len(args) == 1 {
					var op lifecycle.Operation
					raw, err := getRaw(ctx, a, "/vastai/operations/"+url.PathEscape(args[0]), &op)
					if err != nil {
						return err
					}
					if e.jsonOut {
						return e.printJSON(raw)
					}
					e.operationDetail(op)
					return nil
				}
				var ops []lifecycle.Operation
				raw, err := getRaw(ctx, a, "/vastai/operations", &ops)
				if err != nil {
					return err
				}
				if e.jsonOut {
					return e.printJSON(raw)
				}
				e.operationsTable(ops)
				return nil
			})
		},
	}
}

func (e *env) operationsTable(ops []lifecycle.Operation) {
	if len(ops) == 0 {
		fmt.Fprintln(e.io.Out, "No operations.")
		return
	}
	now := time.Now()
	rows := make([][]string, 0, len(ops))
	for _, op := range ops {
		rows = append(rows, []string{
			op.ID, op.Kind, textOr(op.Pool), op.State, opInstance(op.InstanceID),
			display.Since(op.Created, now), strconv.Itoa(len(op.Attempts)), textOr(op.Error),
		})
	}
	e.table([]string{"OPERATION", "KIND", "POOL", "STATE", "INSTANCE", "AGE", "ATTEMPTS", "ERROR"}, rows, 3)
}

func (e *env) operationDetail(op lifecycle.Operation) {
	now := time.Now()
	kv := [][2]string{
		{"Operation", op.ID}, {"Kind", op.Kind}, {"Pool", textOr(op.Pool)}, {"State", op.State},
		{"Instance", opInstance(op.InstanceID)}, {"Reason", textOr(op.Reason)},
		{"Created", display.Since(op.Created, now) + " ago"}, {"Updated", display.Since(op.Updated, now) + " ago"},
	}
	if !op.Ended.IsZero() {
		kv = append(kv, [2]string{"Took", display.Duration(op.Ended.Sub(op.Created))})
	}
	if op.Kind == "destroy" {
		kv = append(kv, [2]string{"Verifications", strconv.Itoa(op.DestroyAttempts)},
			[2]string{"Drain", strconv.FormatBool(op.Drain)}, [2]string{"Force", strconv.FormatBool(op.Force)})
	}
	if op.Error != "" {
		kv = append(kv, [2]string{"Error", op.Error})
	}
	e.fields(kv, "State")
	if len(op.Attempts) == 0 {
		return
	}
	fmt.Fprintln(e.io.Out)
	rows := make([][]string, 0, len(op.Attempts))
	for i, at := range op.Attempts {
		took := "-"
		if !at.Ended.IsZero() {
			took = display.Duration(at.Ended.Sub(at.Started))
		}
		rows = append(rows, []string{
			strconv.Itoa(i + 1), strconv.FormatInt(at.OfferID, 10), strconv.FormatInt(at.MachineID, 10),
			textOr(at.GPUName), display.Rate(at.Price), opInstance(at.InstanceID), at.State, took, textOr(at.Error),
		})
	}
	e.table([]string{"ATTEMPT", "OFFER", "MACHINE", "GPU", "PRICE", "INSTANCE", "STATE", "TOOK", "ERROR"}, rows, 6)
}

// decode reads a JSON answer of the admin API.
func decode(raw []byte, out any) error {
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("the admin API's answer is not the expected JSON: %w", err)
	}
	return nil
}

// autoscaleCell is the pools table's AUTOSCALE column: desired/max and
// the reason, held requests and the warm pool when there are any, or "-"
// for a pool without autoscale.
func autoscaleCell(a *adminapi.Autoscale) string {
	if a == nil {
		return "-"
	}
	cell := fmt.Sprintf("%d/%d %s", a.Desired, a.Max, a.Reason)
	if a.Reason == "" {
		cell = fmt.Sprintf("%d/%d waiting", a.Desired, a.Max)
	}
	if a.Held > 0 {
		cell += fmt.Sprintf(", %d held", a.Held)
	}
	if a.Scale != nil && a.Scale.Stopped > 0 {
		cell += fmt.Sprintf(", %d stopped", a.Scale.Stopped)
	}
	return cell
}
