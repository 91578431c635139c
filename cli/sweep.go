package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/caddy-vastai/caddy-vastai/internal/display"
	"github.com/caddy-vastai/caddy-vastai/lifecycle"
	"github.com/caddy-vastai/caddy-vastai/vastclient"
)

// EnvAPIKey is the environment variable sweep reads the API key from.
const EnvAPIKey = "VAST_API_KEY"

// Sweep's verified-destroy pacing: the first verification after 2s (vast.ai
// destroys asynchronously), doubling to 30s, "destroy_failed" after 5.
const (
	sweepVerifyBackoff    = 2 * time.Second
	sweepVerifyBackoffMax = 30 * time.Second
	sweepVerifyAttempts   = 5
	sweepPollInterval     = 250 * time.Millisecond
)

type sweepFlags struct {
	apiKey, apiURL, gateway string
	execute                 bool
	wait                    time.Duration
}

// sweepRow is one labelled instance found by sweep.
type sweepRow struct {
	ID           int64   `json:"id"`
	Gateway      string  `json:"gateway"`
	Pool         string  `json:"pool"`
	Operation    string  `json:"operation"`
	ActualStatus string  `json:"actual_status"`
	AgeSeconds   float64 `json:"age_seconds"`
	DollarsPerH  float64 `json:"dollars_per_hour"`
	Label        string  `json:"label"`
}

// sweepResult is the outcome of one destruction.
type sweepResult struct {
	ID        int64  `json:"id"`
	Confirmed bool   `json:"confirmed"`
	Operation string `json:"operation,omitempty"`
	Error     string `json:"error,omitempty"`
}

type sweepReport struct {
	Instances []sweepRow `json:"instances"`
	// Foreign counts instances without a caddy-vastai label, or of another
	// gateway than --gateway: never touched.
	Foreign  int           `json:"foreign"`
	Executed bool          `json:"executed"`
	Results  []sweepResult `json:"results,omitempty"`
}

func (e *env) sweepCmd() *cobra.Command {
	f := &sweepFlags{}
	cmd := &cobra.Command{
		Use:   "sweep [--gateway ID] [--execute]",
		Short: "Find (and with --execute destroy) this plugin's instances, without Caddy",
		Long: `The safety net when the gateway is gone: list every instance of the
vast.ai account whose label is a caddy-vastai label (cv:<gateway>:<pool>:<op>),
optionally of one --gateway, straight from the vast.ai API. Nothing else is
ever touched.

Dry-run by default. With --execute each is destroyed and the destruction
verified (the show endpoint says not found and a listing omits it); each is
reported as confirmed or not. A failed or incomplete listing is refused,
never read as "nothing to sweep".

The API key comes from --api-key or ` + EnvAPIKey + ` (prefer the variable: flags
are visible to other users in the process list).`,
		Example: `  VAST_API_KEY=... caddy vastai sweep
  caddy vastai sweep --gateway prod
  caddy vastai sweep --gateway prod --execute --yes`,
		Args: e.exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return e.sweep(cmd.Context(), f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.apiKey, "api-key", "", "vast.ai API key (default: $"+EnvAPIKey+")")
	fl.StringVar(&f.apiURL, "api-url", vastclient.DefaultBaseURL, "vast.ai API URL")
	fl.StringVar(&f.gateway, "gateway", "", "only instances of this gateway id")
	fl.BoolVar(&f.execute, "execute", false, "destroy the instances found (asks first; --yes to skip)")
	fl.DurationVar(&f.wait, "wait", 5*time.Minute, "how long to wait for the destructions to be confirmed")
	return cmd
}

func (e *env) sweep(ctx context.Context, f *sweepFlags) error {
	key := f.apiKey
	if key == "" {
		key = os.Getenv(EnvAPIKey)
	}
	if key == "" {
		return usagef("sweep needs the vast.ai API key: set %s or pass --api-key", EnvAPIKey)
	}
	if f.gateway != "" {
		if _, err := lifecycle.ParseLabel(lifecycle.FormatLabel(f.gateway, "p", "0000")); err != nil {
			return usagef("--gateway: %q is not a gateway id ([a-z0-9-]{1,32})", f.gateway)
		}
	}
	if f.wait <= 0 {
		return usagef("--wait: %s must be positive", f.wait)
	}
	client, err := vastclient.New(vastclient.Config{APIKey: key, BaseURL: f.apiURL})
	if err != nil {
		return usagef("%v", err)
	}
	lctx, cancel := context.WithTimeout(ctx, max(e.timeout, 2*time.Minute))
	res, err := client.ListInstances(lctx, vastclient.ListOptions{})
	cancel()
	if err != nil {
		return failed(fmt.Errorf("listing the account's instances failed, so nothing was destroyed (a failed listing is never read as empty): %w", err))
	}
	if res.Skipped > 0 {
		return failed(fmt.Errorf("vast.ai listed %d instance row(s) without a usable id; refusing to sweep an incomplete listing (nothing was destroyed)", res.Skipped))
	}
	rep, ours := selectOurs(res.Instances, f.gateway, time.Now())
	if !f.execute || len(ours) == 0 {
		return e.printSweep(rep, f)
	}
	if err := e.confirm(fmt.Sprintf("destroy these %d instance(s)", len(ours))); err != nil {
		if !e.jsonOut {
			e.sweepTable(rep)
		}
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, f.wait)
	defer cancel()
	rep.Executed = true
	rep.Results = destroyVerified(wctx, client, res.Instances, ours)
	if err := e.printSweep(rep, f); err != nil {
		return err
	}
	bad := 0
	for _, r := range rep.Results {
		if !r.Confirmed {
			bad++
		}
	}
	if bad > 0 {
		return failed(fmt.Errorf("%d of %d destruction(s) not confirmed: they may still bill; run the sweep again or check the vast.ai console", bad, len(rep.Results)))
	}
	return nil
}

// selectOurs keeps the rows whose label parses as a caddy-vastai label (of
// gateway, when set). Only a label that parses completely counts.
func selectOurs(rows []vastclient.Instance, gateway string, now time.Time) (*sweepReport, map[string][]int64) {
	rep := &sweepReport{Instances: []sweepRow{}}
	ours := map[string][]int64{}
	for i := range rows {
		in := &rows[i]
		l, err := lifecycle.ParseLabel(in.Label)
		if err != nil || (gateway != "" && l.Gateway != gateway) {
			rep.Foreign++
			continue
		}
		r := sweepRow{ID: in.ID, Gateway: l.Gateway, Pool: l.Pool, Operation: l.OpID, ActualStatus: in.ActualStatus, Label: in.Label, DollarsPerH: in.DPHTotal}
		if in.ActualStatus == "stopped" || in.ActualStatus == "exited" {
			r.DollarsPerH = in.StorageTotalCost // no GPU charge, storage still bills
		}
		if in.StartDate > 0 {
			r.AgeSeconds = max(0, float64(now.UnixNano())/1e9-in.StartDate)
		}
		rep.Instances = append(rep.Instances, r)
		ours[l.Gateway] = append(ours[l.Gateway], in.ID)
	}
	sort.Slice(rep.Instances, func(i, j int) bool { return rep.Instances[i].ID < rep.Instances[j].ID })
	return rep, ours
}

// listingFleet gives a lifecycle.Manager the listing sweep already took;
// there is no routing side to drain.
type listingFleet struct {
	rows []vastclient.Instance
	at   time.Time
}

func (listingFleet) State(int64) (string, time.Time, bool) { return "", time.Time{}, false }
func (listingFleet) Drain(context.Context, int64) error    { return nil }
func (listingFleet) Undrain(int64)                         {}
func (f listingFleet) Instances() ([]vastclient.Instance, time.Time, bool) {
	return f.rows, f.at, true
}

// Listing is never offered as fresh: sweep's one listing was taken before
// the destroys, so verification must list again by itself.
func (listingFleet) Listing() (lifecycle.Listing, bool) { return lifecycle.Listing{}, false }
func (listingFleet) Exclude(int64, string)              {}

// destroyVerified destroys each gateway's instances through a
// lifecycle.Manager of that gateway over a memory store, so sweep uses the
// same verified destruction as the gateway (DELETE re-issued until the
// show endpoint and a listing both say gone), and waits for each outcome.
func destroyVerified(ctx context.Context, client *vastclient.Client, rows []vastclient.Instance, ours map[string][]int64) []sweepResult {
	type pending struct {
		mgr *lifecycle.Manager
		res *sweepResult
	}
	var waits []pending
	var results []*sweepResult
	fleet := listingFleet{rows: rows, at: time.Now()}
	for gw, list := range ours {
		mgr, err := lifecycle.New(lifecycle.Config{
			GatewayID: gw, DestroyBackoff: sweepVerifyBackoff, DestroyBackoffMax: sweepVerifyBackoffMax,
			DestroyVerifyAttempts: sweepVerifyAttempts,
		}, client, lifecycle.NewMemoryStore(), fleet)
		if err != nil {
			for _, id := range list {
				results = append(results, &sweepResult{ID: id, Error: err.Error()})
			}
			continue
		}
		defer mgr.Close()
		for _, id := range list {
			r := &sweepResult{ID: id}
			results = append(results, r)
			op, err := mgr.Destroy(ctx, id, "caddy vastai sweep")
			if err != nil {
				r.Error = err.Error()
				continue
			}
			r.Operation = op.ID
			waits = append(waits, pending{mgr, r})
		}
	}
	tick := time.NewTicker(sweepPollInterval)
	defer tick.Stop()
	for len(waits) > 0 {
		next := waits[:0]
		for _, w := range waits {
			op, err := w.mgr.Operation(ctx, w.res.Operation)
			switch {
			case err == nil && op.State == lifecycle.StateSucceeded:
				w.res.Confirmed = true
			case err == nil && op.State == lifecycle.StateDestroyFailed:
				w.res.Error = "not verified after " + strconv.Itoa(op.DestroyAttempts) + " checks: " + op.Error
			default:
				next = append(next, w)
			}
		}
		waits = next
		if len(waits) == 0 {
			break
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			for _, w := range waits {
				w.res.Error = "not confirmed within --wait"
				if errors.Is(ctx.Err(), context.Canceled) {
					w.res.Error = "interrupted before the destruction was confirmed"
				}
			}
			waits = nil
		}
	}
	out := make([]sweepResult, len(results))
	for i, r := range results {
		out[i] = *r
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (e *env) printSweep(rep *sweepReport, f *sweepFlags) error {
	if e.jsonOut {
		return e.printJSONValue(rep)
	}
	e.sweepTable(rep)
	switch {
	case len(rep.Instances) == 0:
	case !rep.Executed:
		fmt.Fprintf(e.io.Out, "\nDry run: nothing was destroyed. Pass --execute to destroy these %d instance(s).\n", len(rep.Instances))
	default:
		fmt.Fprintln(e.io.Out)
		rows := make([][]string, 0, len(rep.Results))
		for _, r := range rep.Results {
			result := "confirmed"
			if !r.Confirmed {
				result = "not confirmed"
			}
			rows = append(rows, []string{strconv.FormatInt(r.ID, 10), result, textOr(r.Operation), textOr(r.Error)})
		}
		e.table([]string{"ID", "RESULT", "OPERATION", "DETAIL"}, rows, 1)
	}
	return nil
}

func (e *env) sweepTable(rep *sweepReport) {
	if len(rep.Instances) == 0 {
		fmt.Fprintf(e.io.Out, "No instance carries a caddy-vastai label (%d other instance(s) left alone).\n", rep.Foreign)
		return
	}
	rows := make([][]string, 0, len(rep.Instances))
	total := 0.0
	for _, r := range rep.Instances {
		age := "-"
		if r.AgeSeconds > 0 {
			age = display.Duration(time.Duration(r.AgeSeconds * float64(time.Second)))
		}
		rows = append(rows, []string{strconv.FormatInt(r.ID, 10), r.Gateway, r.Pool, r.Operation, textOr(r.ActualStatus), age, display.Rate(r.DollarsPerH)})
		total += r.DollarsPerH
	}
	e.table([]string{"ID", "GATEWAY", "POOL", "OPERATION", "STATE", "AGE", "PRICE"}, rows, 4)
	fmt.Fprintf(e.io.Out, "\n%d instance(s), %s in all; %d other instance(s) left alone.\n", len(rep.Instances), display.Rate(total), rep.Foreign)
}
