package cli

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/caddy-vastai/caddy-vastai/internal/display"
	"github.com/caddy-vastai/caddy-vastai/lifecycle"
)

// maxProvisionCount is the admin API's limit per request.
const maxProvisionCount = 32

// parseOfferID accepts "123", " 123 " and "vastai-123" (any case), the
// spellings operators paste.
func parseOfferID(s string) (int64, error) {
	t := strings.TrimSpace(s)
	if len(t) > 7 && strings.EqualFold(t[:7], "vastai-") {
		t = t[7:]
	}
	id, err := strconv.ParseInt(t, 10, 64)
	if err != nil || id <= 0 {
		return 0, usagef("--offer: %q is not an offer id (a positive integer, as 'caddy vastai offers' lists)", s)
	}
	return id, nil
}

func (e *env) provisionCmd() *cobra.Command {
	var count int
	var offer string
	cmd := &cobra.Command{
		Use:   "provision <pool> [--count N] [--offer ID]",
		Short: "Rent new instances for a pool (they bill from creation)",
		Long: `Rent new instances for a pool. Each becomes an operation that picks an
offer with the pool's filters (or --offer), creates the instance and waits
until it serves. Budgets and max_instances are enforced by the gateway.`,
		Example: "  caddy vastai provision llm\n  caddy vastai provision llm --count 2 --yes\n  caddy vastai provision llm --offer 4242",
		Args:    e.exactArgs(1, "a pool name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if count < 1 || count > maxProvisionCount {
				return usagef("--count: %d is out of range 1-%d", count, maxProvisionCount)
			}
			body := map[string]any{"count": count}
			if cmd.Flags().Changed("offer") {
				id, err := parseOfferID(offer)
				if err != nil {
					return err
				}
				body["offer_id"] = id
			}
			pool := args[0]
			what := fmt.Sprintf("provision %d instance(s) in pool %q", count, pool)
			if err := e.confirm(what); err != nil {
				return err
			}
			return e.call(cmd, func(ctx context.Context, a *Admin) error {
				var raw []byte
				if err := a.Post(ctx, "/vastai/pools/"+url.PathEscape(pool)+"/instances", body, &raw); err != nil {
					return err
				}
				if e.jsonOut {
					return e.printJSON(raw)
				}
				var out struct {
					Operations []lifecycle.Operation `json:"operations"`
				}
				if err := decode(raw, &out); err != nil {
					return err
				}
				e.operationsTable(out.Operations)
				fmt.Fprintln(e.io.Out, "\nFollow them with 'caddy vastai ops <id>'.")
				return nil
			})
		},
	}
	cmd.Flags().IntVar(&count, "count", 1, "number of instances (1-32)")
	cmd.Flags().StringVar(&offer, "offer", "", "rent this offer id for the first attempt")
	return cmd
}

func (e *env) drainCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "drain <id>",
		Short:   "Stop routing to an instance, let its requests finish, then destroy it",
		Example: "  caddy vastai drain 123456\n  caddy vastai drain 123456 --yes",
		Args:    e.exactArgs(1, "an instance id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseID(args[0])
			if err != nil {
				return err
			}
			return e.destroyLike(cmd, id, "drain and then destroy instance "+args[0], "/vastai/instances/"+strconv.FormatInt(id, 10)+"/drain", "POST")
		},
	}
}

func (e *env) destroyCmd() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "destroy <id> [--force]",
		Short: "Destroy an instance at once and verify it is gone",
		Long: `Destroy an instance at once (in-flight requests fail; use drain to let
them finish) and verify that it is gone. Instances of a configured pool
or labelled by this gateway are destroyed as they are; --force destroys
any instance of the vast.ai account.`,
		Example: "  caddy vastai destroy 123456\n  caddy vastai destroy 123456 --force --yes",
		Args:    e.exactArgs(1, "an instance id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseID(args[0])
			if err != nil {
				return err
			}
			path := "/vastai/instances/" + strconv.FormatInt(id, 10)
			what := "destroy instance " + args[0]
			if force {
				path += "?force=1"
				what += " (forced, even if this gateway does not own it)"
			}
			return e.destroyLike(cmd, id, what, path, "DELETE")
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "destroy even an instance this gateway does not own")
	return cmd
}

func (e *env) destroyLike(cmd *cobra.Command, id int64, what, path, method string) error {
	if err := e.confirm(what); err != nil {
		return err
	}
	return e.call(cmd, func(ctx context.Context, a *Admin) error {
		var raw []byte
		if err := a.Do(ctx, method, path, nil, &raw); err != nil {
			return err
		}
		if e.jsonOut {
			return e.printJSON(raw)
		}
		var op lifecycle.Operation
		if err := decode(raw, &op); err != nil {
			return err
		}
		fmt.Fprintf(e.io.Out, "Instance %d: operation %s is %s.\n", id, op.ID, e.colour(op.State))
		fmt.Fprintf(e.io.Out, "The destruction is verified in the background; follow it with 'caddy vastai ops %s'.\n", op.ID)
		return nil
	})
}

func (e *env) reconcileCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "reconcile",
		Short: "Reconcile now: compare vast.ai's listing with the gateway's records and act",
		Long: `Run the reconciliation the gateway runs every reconcile_interval, now:
adopt or destroy orphans (by the orphans policy), confirm ghosts, destroy
dead instances, provision up to min_instances, resume unfinished work.
It does nothing the next scheduled run would not do, so it asks no
confirmation.`,
		Example: "  caddy vastai reconcile\n  caddy vastai reconcile --json",
		Args:    e.exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return e.call(cmd, func(ctx context.Context, a *Admin) error {
				var raw []byte
				err := a.Post(ctx, "/vastai/reconcile", nil, &raw)
				var ae *APIError
				if errors.As(err, &ae) && len(ae.Body) > 0 && ae.Body[0] == '{' {
					// A failed reconciliation still says what it did.
					var w struct {
						Report *lifecycle.Report `json:"report"`
					}
					if decode(ae.Body, &w) == nil && w.Report != nil && !e.jsonOut {
						e.reconcileTable(*w.Report)
					} else if e.jsonOut {
						_ = e.printJSON(ae.Body)
					}
					return err
				}
				if err != nil {
					return err
				}
				if e.jsonOut {
					return e.printJSON(raw)
				}
				var rep lifecycle.Report
				if err := decode(raw, &rep); err != nil {
					return err
				}
				e.reconcileTable(rep)
				return nil
			})
		},
	}
}

func (e *env) reconcileTable(r lifecycle.Report) {
	kv := [][2]string{
		{"Listed", strconv.FormatBool(r.Listed)},
		{"Owned", strconv.Itoa(r.Owned)},
		{"Took", display.Duration(r.Finished.Sub(r.Started))},
	}
	if r.ListError != "" {
		kv = append(kv, [2]string{"List error", r.ListError})
	}
	for _, l := range []struct {
		name string
		ids  []int64
	}{
		{"Orphans adopted", r.OrphansAdopted}, {"Orphans destroyed", r.OrphansDestroyed},
		{"Orphans pending", r.OrphansPending}, {"Orphans ignored", r.OrphansIgnored},
		{"Ghost suspects", r.GhostSuspects}, {"Ghosts", r.Ghosts}, {"Dead destroyed", r.DeadDestroyed},
		{"Unmanaged", r.Unmanaged}, {"Destroy retries", r.DestroyRetries},
	} {
		if len(l.ids) > 0 {
			kv = append(kv, [2]string{l.name, ids(l.ids)})
		}
	}
	if len(r.ProvisionsStarted) > 0 {
		kv = append(kv, [2]string{"Provisions started", strings.Join(r.ProvisionsStarted, ",")})
	}
	if len(r.Resumed) > 0 {
		kv = append(kv, [2]string{"Resumed", strings.Join(r.Resumed, ",")})
	}
	for _, msg := range r.Errors {
		kv = append(kv, [2]string{"Error", msg})
	}
	e.fields(kv, "")
}

func (e *env) costsCmd() *cobra.Command {
	var by, period, since string
	cmd := &cobra.Command{
		Use:   "costs [--by pool|instance|key] [--period day|month] [--since YYYY-MM-DD]",
		Short: "Show what the fleet has cost, per pool, instance or client key, per day or month",
		Long: `Show the cost ledger: spend accrued per pool (or per instance) per day
(or month), kept in Caddy's storage so destroyed instances still count;
--by key shows what each client key spent, with its requests and tokens.`,
		Example: "  caddy vastai costs\n  caddy vastai costs --by instance --period month --since 2026-01-01\n  caddy vastai costs --by key --period month",
		Args:    e.exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if by != "pool" && by != "instance" && by != "key" {
				return usagef("--by: %q must be pool, instance or key", by)
			}
			if period != "day" && period != "month" {
				return usagef("--period: %q must be day or month", period)
			}
			q := url.Values{"by": {by}, "period": {period}}
			if since != "" {
				if _, err := time.Parse(time.DateOnly, since); err != nil {
					return usagef("--since: %q is not a date like 2026-01-31", since)
				}
				q.Set("since", since)
			}
			return e.call(cmd, func(ctx context.Context, a *Admin) error {
				var c costsView
				raw, err := getRaw(ctx, a, "/vastai/costs?"+q.Encode(), &c)
				if err != nil {
					return err
				}
				if e.jsonOut {
					return e.printJSON(raw)
				}
				e.costsTable(c)
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&by, "by", "pool", "group by pool, instance or key")
	cmd.Flags().StringVar(&period, "period", "day", "one row per day or month")
	cmd.Flags().StringVar(&since, "since", "", "first day to include (YYYY-MM-DD)")
	return cmd
}

func (e *env) costsTable(c costsView) {
	header := []string{"PERIOD", "POOL", "HOURS", "COST"}
	switch c.By {
	case "key":
		header = []string{"PERIOD", "KEY", "REQUESTS", "TOKENS IN", "TOKENS OUT", "COST"}
	case "instance":
		header = []string{"PERIOD", "POOL", "INSTANCE", "HOURS", "COST"}
	}
	rows := make([][]string, 0, len(c.Rows))
	for _, r := range c.Rows {
		if c.By == "key" {
			rows = append(rows, []string{r.Period, r.Key, strconv.FormatInt(r.Requests, 10),
				strconv.FormatInt(r.TokensIn, 10), strconv.FormatInt(r.TokensOut, 10), display.Dollars(r.Spend)})
			continue
		}
		row := []string{r.Period, textOr(r.Pool)}
		if c.By == "instance" {
			row = append(row, opInstance(r.InstanceID))
		}
		rows = append(rows, append(row, fmt.Sprintf("%.2f", r.Hours), display.Dollars(r.Dollars)))
	}
	if len(rows) == 0 {
		fmt.Fprintln(e.io.Out, "No costs recorded in this period.")
	} else {
		e.table(header, rows, -1)
	}
	since := c.Since
	if since == "" {
		since = "the start of the ledger"
	}
	fmt.Fprintf(e.io.Out, "\nTotal since %s: %s. Spending now: %s.\n", since, display.Dollars(c.TotalDollars), display.Rate(c.SpendPerHour))
}
