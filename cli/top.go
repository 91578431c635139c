package cli

import (
	"github.com/spf13/cobra"

	"github.com/caddy-vastai/caddy-vastai/tui"
)

func init() { extraCommands = append(extraCommands, (*env).topCmd) }

// topCmd is the live terminal view. The view itself lives in package tui;
// this file only hands it the admin client resolved like every command.
func (e *env) topCmd() *cobra.Command {
	var opts tui.Options
	cmd := &cobra.Command{
		Use:   "top [--pool NAME] [--refresh 1s]",
		Short: "Live terminal view of the fleet (keys: j/k, /, s, enter, d, x, p, q)",
		Long: `A full-screen view of the fleet that refreshes from the admin API:
instances by state, spend, per-GPU bars, operations in progress.
Keys: arrows or j/k move, / filters, s sorts, enter shows details,
d drains, x destroys, p provisions into the selected pool (each asks y/n),
q or Ctrl-C quits.`,
		Example: "  caddy vastai top\n  caddy vastai top --pool llm --refresh 2s",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			admin, err := e.api()
			if err != nil {
				return err
			}
			if err := tui.Run(cmd.Context(), admin, opts); err != nil {
				return failed(err)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&opts.Pool, "pool", "", "show only this pool")
	cmd.Flags().DurationVar(&opts.Refresh, "refresh", tui.DefaultRefresh, "how often to refresh")
	return cmd
}
