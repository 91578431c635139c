package cli

// `caddy vastai keys ls|create|revoke` and `caddy vastai usage`: the
// client keys of /vastai/keys. A created key's secret is printed once.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/caddy-vastai/caddy-vastai/adminapi"
	"github.com/caddy-vastai/caddy-vastai/internal/display"
)

func init() { extraCommands = append(extraCommands, (*env).keysCmd, (*env).usageCmd) }

func (e *env) keysCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "Manage client API keys: list, create, revoke",
		Example: "  caddy vastai keys ls\n  caddy vastai keys create team-b --models m1 --rpm 60 --budget 10 --period day\n" +
			"  caddy vastai keys revoke team-b --yes",
		Args: e.exactArgs(0, "a subcommand (ls, create, revoke)"),
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(e.keysLsCmd(), e.keysCreateCmd(), e.keysRevokeCmd())
	return cmd
}

func (e *env) keysLsCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List the client keys with their limits and spend (never their secrets)",
		Args:    e.exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return e.call(cmd, func(ctx context.Context, a *Admin) error {
				var list []adminapi.Key
				raw, err := getRaw(ctx, a, "/vastai/keys", &list)
				if err != nil {
					return err
				}
				if e.jsonOut {
					return e.printJSON(raw)
				}
				e.keysTable(list)
				return nil
			})
		},
	}
}

func (e *env) keysTable(list []adminapi.Key) {
	if len(list) == 0 {
		fmt.Fprintln(e.io.Out, "No client keys.")
		return
	}
	rows := make([][]string, 0, len(list))
	for _, k := range list {
		budget := "-"
		if k.Budget > 0 {
			budget = display.Dollars(k.Budget) + "/" + k.Period
		}
		rows = append(rows, []string{
			k.Name, k.Status, k.Source, listOr(k.Pools), listOr(k.Models), limits(k),
			budget, display.Dollars(k.Spent), strconv.Itoa(k.InFlight), timeOrDash(k.Expires),
		})
	}
	e.table([]string{"NAME", "STATUS", "SOURCE", "POOLS", "MODELS", "LIMITS", "BUDGET", "SPENT", "IN FLIGHT", "EXPIRES"}, rows, -1)
}

func listOr(l []string) string {
	if len(l) == 0 {
		return "all"
	}
	return strings.Join(l, ",")
}

// limits renders "60 rpm, 100000 tpm, 4 parallel", or "-".
func limits(k adminapi.Key) string {
	var parts []string
	if k.RPM > 0 {
		parts = append(parts, strconv.Itoa(k.RPM)+" rpm")
	}
	if k.TPM > 0 {
		parts = append(parts, strconv.Itoa(k.TPM)+" tpm")
	}
	if k.MaxParallel > 0 {
		parts = append(parts, strconv.Itoa(k.MaxParallel)+" parallel")
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ", ")
}

func timeOrDash(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.UTC().Format(time.DateOnly)
}

// keyFlags are the flags of keys create.
type keyFlags struct {
	pools, models      []string
	rpm, tpm, parallel int
	budget             float64
	period, expires    string
}

func (e *env) keysCreateCmd() *cobra.Command {
	var f keyFlags
	cmd := &cobra.Command{
		Use:   "create <name>",
		Short: "Create a client key; its secret is printed once and never again",
		Example: "  caddy vastai keys create team-b --pools llm --rpm 60 --budget 10 --period day\n" +
			"  caddy vastai keys create ci --models m1 --expires 2027-01-01 --json | jq -r .secret",
		Args: e.exactArgs(1, "a key name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			body := map[string]any{"name": args[0], "rpm": f.rpm, "tpm": f.tpm, "max_parallel": f.parallel, "budget": f.budget}
			if len(f.pools) > 0 {
				body["pools"] = f.pools
			}
			if len(f.models) > 0 {
				body["models"] = f.models
			}
			if f.period != "" {
				body["period"] = f.period
			}
			if f.expires != "" {
				body["expires"] = f.expires
			}
			return e.call(cmd, func(ctx context.Context, a *Admin) error {
				var raw []byte
				if err := a.Post(ctx, "/vastai/keys", body, &raw); err != nil {
					return err
				}
				if e.jsonOut {
					return e.printJSON(raw)
				}
				var k adminapi.KeyCreated
				if err := json.Unmarshal(raw, &k); err != nil {
					return fmt.Errorf("POST /vastai/keys: the admin API's answer is not the expected JSON: %w", err)
				}
				fmt.Fprintf(e.io.Out, "Created key %s. Its secret, shown only now:\n\n  %s\n\n", k.Name, k.Secret)
				return nil
			})
		},
	}
	fl := cmd.Flags()
	fl.StringSliceVar(&f.pools, "pools", nil, "pools the key may use (default all)")
	fl.StringSliceVar(&f.models, "models", nil, "models the key may request (default all)")
	fl.IntVar(&f.rpm, "rpm", 0, "requests per minute (0: no limit)")
	fl.IntVar(&f.tpm, "tpm", 0, "tokens per minute (0: no limit)")
	fl.IntVar(&f.parallel, "max-parallel", 0, "requests in flight at once (0: no limit)")
	fl.Float64Var(&f.budget, "budget", 0, "dollars per period (0: no budget)")
	fl.StringVar(&f.period, "period", "", "budget period: day, month (default) or total")
	fl.StringVar(&f.expires, "expires", "", "expiry: a date (2027-01-01) or an RFC 3339 time")
	return cmd
}

func (e *env) keysRevokeCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "revoke <name>",
		Short:   "Revoke a client key, on every gateway sharing the storage within a poll",
		Example: "  caddy vastai keys revoke team-b --yes",
		Args:    e.exactArgs(1, "a key name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := e.confirm("revoke key " + args[0]); err != nil {
				return err
			}
			return e.call(cmd, func(ctx context.Context, a *Admin) error {
				var raw []byte
				if err := a.Delete(ctx, "/vastai/keys/"+url.PathEscape(args[0]), &raw); err != nil {
					return err
				}
				if e.jsonOut {
					return e.printJSON(raw)
				}
				fmt.Fprintf(e.io.Out, "Revoked key %s.\n", args[0])
				return nil
			})
		},
	}
}

func (e *env) usageCmd() *cobra.Command {
	var period string
	cmd := &cobra.Command{
		Use:     "usage [<key>] [--period day|month|total]",
		Short:   "Show requests, tokens and spend per client key",
		Example: "  caddy vastai usage\n  caddy vastai usage team-a --period day",
		Args:    e.maxArgs(1, "at most a key name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if period != "day" && period != "month" && period != "total" {
				return usagef("--period: %q must be day, month or total", period)
			}
			return e.call(cmd, func(ctx context.Context, a *Admin) error {
				if len(args) == 1 {
					return e.oneKeyUsage(ctx, a, args[0], period)
				}
				var list []adminapi.Key
				raw, err := getRaw(ctx, a, "/vastai/keys", &list)
				if err != nil {
					return err
				}
				if e.jsonOut {
					return e.printJSON(raw)
				}
				e.usageTable(list, period)
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&period, "period", "month", "day, month or total")
	return cmd
}

func (e *env) oneKeyUsage(ctx context.Context, a *Admin, name, period string) error {
	var u adminapi.KeyUsage
	raw, err := getRaw(ctx, a, "/vastai/keys/"+url.PathEscape(name)+"/usage?period="+period, &u)
	if err != nil {
		return err
	}
	if e.jsonOut {
		return e.printJSON(raw)
	}
	e.usageTable([]adminapi.Key{{Name: u.Name, Day: u, Month: u, Total: u}}, period)
	return nil
}

func (e *env) usageTable(list []adminapi.Key, period string) {
	if len(list) == 0 {
		fmt.Fprintln(e.io.Out, "No client keys.")
		return
	}
	rows := make([][]string, 0, len(list))
	var total float64
	for _, k := range list {
		u := k.Month
		switch period {
		case "day":
			u = k.Day
		case "total":
			u = k.Total
		}
		total += u.Spend
		est := ""
		if u.Estimated > 0 {
			est = strconv.FormatInt(u.Estimated, 10)
		}
		rows = append(rows, []string{k.Name, textOr(u.PeriodID), strconv.FormatInt(u.Requests, 10), strconv.FormatInt(u.Errors, 10),
			strconv.FormatInt(u.TokensIn, 10), strconv.FormatInt(u.TokensOut, 10), textOr(est), display.Dollars(u.Spend)})
	}
	e.table([]string{"KEY", "PERIOD", "REQUESTS", "ERRORS", "TOKENS IN", "TOKENS OUT", "ESTIMATED", "SPEND"}, rows, -1)
	fmt.Fprintf(e.io.Out, "\nTotal: %s.\n", display.Dollars(total))
}
