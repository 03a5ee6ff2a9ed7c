package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"text/tabwriter"

	"github.com/shoal-kv/shoal/sim"
)

// errVerdict marks an experiment whose measurements fell outside their
// expected bands.
var errVerdict = errors.New("a check failed")

// simCmd runs `shoal sim list` and `shoal sim EXPERIMENT`.
func simCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("sim", stderr)
	seed := fs.Int64("seed", 1, "base seed: repetition i uses seed+i")
	seeds := fs.Int("seeds", 0, "repetitions behind each confidence interval (0: the experiment's default)")
	quick := fs.Bool("quick", false, "the reduced form CI runs: fewer seeds, shorter")
	out := fs.String("out", "sim-out", "directory for the tables (CSV) and figures (PNG and CSV), under EXPERIMENT/")
	showLog := fs.Bool("log", false, "show the nodes' and clients' warnings and errors on stderr")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(pos, 1, "EXPERIMENT or list"); err != nil {
		return err
	}
	if pos[0] == "list" {
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		for _, e := range sim.Experiments() {
			fmt.Fprintf(tw, "%s\t%s\n", e.Name, e.Summary)
		}
		return tw.Flush()
	}
	e, ok := sim.Lookup(pos[0])
	if !ok {
		return fmt.Errorf("%w: unknown experiment %q (shoal sim list names them)", errUsage, pos[0])
	}
	if *seeds < 0 {
		return fmt.Errorf("%w: --seeds %d", errUsage, *seeds)
	}
	dir := filepath.Join(*out, e.Name)
	logOut := io.Discard
	if *showLog {
		logOut = stderr
	}
	r, err := e.Run(ctx, sim.Config{
		Seed: *seed, Seeds: *seeds, Quick: *quick, Out: dir, Progress: stderr,
		Logger: slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return err
	}
	paths, err := r.Write(dir)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "wrote %d files to %s\n", len(paths), dir)
	r.Print(stdout)
	if !r.Pass() {
		return errVerdict
	}
	return nil
}
