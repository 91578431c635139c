// Package cli is the `caddy vastai` command: operator subcommands that talk
// to a running Caddy's admin API (status, instances, provision, drain, ...)
// and `sweep`, which talks to vast.ai directly when the gateway is gone.
//
// It depends on caddycmd and cobra but not on the plugin's Caddy modules;
// the plugin registers it (Register) so every xcaddy build has it.
package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// Exit codes.
const (
	// ExitOK: the command did what was asked.
	ExitOK = 0
	// ExitFailed: the API said no or could not be reached (the message is
	// printed), or a destruction was not confirmed.
	ExitFailed = 1
	// ExitUsage: bad flags or arguments, or a destructive command without
	// --yes and without a terminal to ask on.
	ExitUsage = 2
)

// IO is where a command reads and writes.
type IO struct {
	In       io.Reader
	Out, Err io.Writer
	// Terminal is true when stdin and stdout are terminals: confirmations
	// are asked there instead of requiring --yes.
	Terminal bool
	// Color is true when stdout is a terminal that takes colour.
	Color bool
}

// StdIO returns the process's standard streams, with Terminal and Color
// detected (NO_COLOR and TERM=dumb turn colour off).
func StdIO() IO {
	outTTY := term.IsTerminal(int(os.Stdout.Fd()))
	inTTY := term.IsTerminal(int(os.Stdin.Fd()))
	_, noColor := os.LookupEnv("NO_COLOR")
	return IO{
		In: os.Stdin, Out: os.Stdout, Err: os.Stderr,
		Terminal: inTTY && outTTY,
		Color:    outTTY && !noColor && os.Getenv("TERM") != "dumb",
	}
}

// Register adds `vastai` to Caddy's command line. The registered command
// hands its arguments untouched to Run, which owns flag parsing, so that
// usage errors exit with 2 (Caddy's own wrapper would exit 1).
func Register() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "vastai",
		Usage: "<command> [flags]",
		Short: "Operates the caddy-vastai GPU fleet (status, instances, provision, drain, sweep, ...)",
		Long: `
Operates the GPU fleet of the caddy-vastai plugin through the running
Caddy's admin API, like 'caddy trust' does: --address, or --config and
--adapter to read admin.listen from the config, else CADDY_ADMIN, else
localhost:2019.

'caddy vastai sweep' talks to vast.ai directly and works without Caddy.

Run 'caddy vastai --help' for the list of commands.`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.DisableFlagParsing = true
			cmd.RunE = func(cmd *cobra.Command, args []string) error {
				ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
				code := Run(ctx, args, StdIO())
				stop()
				if code != ExitOK {
					os.Exit(code)
				}
				return nil
			}
		},
	})
}

// Run executes `caddy vastai <args>` and returns the exit code. It never
// calls os.Exit, so tests run commands in-process.
func Run(ctx context.Context, args []string, stdio IO) int {
	if ctx == nil {
		ctx = context.Background()
	}
	e := &env{io: stdio}
	// A "caddy" parent makes help and hints read "caddy vastai ...".
	root := &cobra.Command{Use: "caddy", SilenceErrors: true, SilenceUsage: true}
	root.AddCommand(e.rootCommand())
	root.SetArgs(append([]string{"vastai"}, args...))
	root.SetIn(stdio.In)
	root.SetOut(stdio.Out)
	root.SetErr(stdio.Err)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	var xe *exitError
	if !errors.As(err, &xe) {
		// Cobra's own errors: unknown command or flag, wrong arguments.
		xe = &exitError{code: ExitUsage, err: err}
	}
	if xe.err != nil {
		fmt.Fprintln(stdio.Err, "Error: "+xe.err.Error())
	}
	if xe.code == ExitUsage && xe.err != nil && !xe.noHint {
		if e.cmdPath == "" {
			e.cmdPath = "caddy vastai"
		}
		fmt.Fprintf(stdio.Err, "Run '%s --help' for usage.\n", e.cmdPath)
	}
	return xe.code
}

// exitError carries an exit code through cobra.
type exitError struct {
	code   int
	err    error
	noHint bool
}

func (x *exitError) Error() string { return x.err.Error() }
func (x *exitError) Unwrap() error { return x.err }

func usagef(format string, args ...any) error {
	return &exitError{code: ExitUsage, err: fmt.Errorf(format, args...)}
}

// failed maps an error of an admin or vast.ai call to its exit code: a bad
// --address is a usage error, anything else means the API said no.
func failed(err error) error {
	if err == nil {
		return nil
	}
	var xe *exitError
	if errors.As(err, &xe) {
		return err
	}
	if errors.Is(err, ErrBadAddress) {
		return &exitError{code: ExitUsage, err: err}
	}
	return &exitError{code: ExitFailed, err: err}
}

// env is the state shared by the commands of one Run.
type env struct {
	io      IO
	cmdPath string

	jsonOut bool
	yes     bool
	address string
	config  string
	adapter string
	timeout time.Duration
}

func (e *env) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "vastai",
		Short: "Operate the caddy-vastai GPU fleet",
		Long: `Operate the caddy-vastai GPU fleet through the running Caddy's admin API.

The admin address is --address, else admin.listen of the --config file
(adapted with --adapter), else CADDY_ADMIN, else localhost:2019.
Tables are for people; --json prints the API's JSON for scripts.
Destructive commands ask for confirmation on a terminal and need --yes
otherwise. Exit codes: 0 ok, 1 the API said no, 2 usage error.`,
		Example: `  caddy vastai status
  caddy vastai ls --pool llm
  caddy vastai provision llm --count 2
  caddy vastai --address unix//run/caddy/admin.sock ops`,
		SilenceErrors:     true,
		SilenceUsage:      true,
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
		PersistentPreRun: func(cmd *cobra.Command, _ []string) {
			e.cmdPath = cmd.CommandPath()
		},
		// Runnable, so that an unknown subcommand is an error (exit 2)
		// instead of cobra printing help for a non-root command.
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usagef("unknown command %q for %q", args[0], cmd.CommandPath())
			}
			return cmd.Help()
		},
	}
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		e.cmdPath = cmd.CommandPath()
		return usagef("%v", err)
	})
	pf := root.PersistentFlags()
	pf.StringVar(&e.address, "address", "", "address of Caddy's admin API (default: from --config, CADDY_ADMIN, or localhost:2019)")
	pf.StringVarP(&e.config, "config", "c", "", "Caddy config file to read admin.listen from (if --address is not used)")
	pf.StringVarP(&e.adapter, "adapter", "a", "", "config adapter for --config (e.g. caddyfile)")
	pf.BoolVar(&e.jsonOut, "json", false, "print the API's JSON instead of a table")
	pf.BoolVarP(&e.yes, "yes", "y", false, "do destructive actions without asking")
	pf.DurationVar(&e.timeout, "timeout", 30*time.Second, "how long to wait for an answer")

	root.AddCommand(
		e.statusCmd(), e.instancesCmd(), e.instanceCmd(), e.poolsCmd(), e.offersCmd(),
		e.provisionCmd(), e.operationsCmd(), e.drainCmd(), e.destroyCmd(), e.reconcileCmd(),
		e.costsCmd(), e.sweepCmd(),
	)
	for _, mk := range extraCommands {
		root.AddCommand(mk(e))
	}
	return root
}

// extraCommands are subcommands that other files of the package add in an
// init (the terminal view, `top`). Their RunE should return errors through
// failed or usagef so the exit code is right: a plain error exits with 2.
var extraCommands []func(e *env) *cobra.Command

// api resolves the admin address the way `caddy trust` does.
func (e *env) api() (*Admin, error) {
	if e.adapter != "" && e.config == "" {
		return nil, usagef("--adapter needs --config")
	}
	addr, err := caddycmd.DetermineAdminAPIAddress(e.address, nil, e.config, e.adapter)
	if err != nil {
		return nil, usagef("finding the admin address from --config %s: %v", e.config, err)
	}
	return NewAdmin(addr), nil
}

// call runs fn with the admin client and a --timeout context.
func (e *env) call(cmd *cobra.Command, fn func(ctx context.Context, a *Admin) error) error {
	a, err := e.api()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), e.timeout)
	defer cancel()
	return failed(fn(ctx, a))
}

// printJSON prints an API answer indented, as it came.
func (e *env) printJSON(raw []byte) error {
	var buf strings.Builder
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return failed(fmt.Errorf("the admin API's answer is not JSON: %w", err))
	}
	b, _ := json.MarshalIndent(v, "", "  ")
	buf.Write(b)
	buf.WriteString("\n")
	_, err := io.WriteString(e.io.Out, buf.String())
	return err
}

// confirm asks on a terminal; without one it needs --yes. Declining exits
// with 1 and changes nothing.
func (e *env) confirm(action string) error {
	if e.yes {
		return nil
	}
	if !e.io.Terminal {
		return &exitError{code: ExitUsage, noHint: true, err: fmt.Errorf("refusing to %s without confirmation: not on a terminal; pass --yes to confirm", action)}
	}
	fmt.Fprintf(e.io.Err, "%s? [y/N] ", capitalize(action))
	line, _ := bufio.NewReader(e.io.In).ReadString('\n')
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return nil
	}
	return &exitError{code: ExitFailed, err: errors.New("cancelled; nothing was changed")}
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// exactArgs checks positional arguments, as a usage error.
func (e *env) exactArgs(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		e.cmdPath = cmd.CommandPath()
		if len(args) != n {
			return usagef("%s: expected %s, got %d argument(s)", cmd.CommandPath(), names, len(args))
		}
		return nil
	}
}

func (e *env) maxArgs(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		e.cmdPath = cmd.CommandPath()
		if len(args) > n {
			return usagef("%s: expected at most %s, got %d arguments", cmd.CommandPath(), names, len(args))
		}
		return nil
	}
}

// printJSONValue prints a value the CLI built itself (sweep) as JSON.
func (e *env) printJSONValue(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return failed(fmt.Errorf("encoding JSON: %w", err))
	}
	return e.printJSON(b)
}
