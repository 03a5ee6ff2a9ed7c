package sim

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sort"
)

// Config configures a run of an experiment.
type Config struct {
	// Seed is the base seed: repetition i uses Seed+i, so a run repeats.
	Seed int64
	// Seeds is how many repetitions give each confidence interval. If
	// zero, the experiment's own default.
	Seeds int
	// Quick runs a reduced form (fewer seeds, shorter runs): what CI runs,
	// to exercise the verdict logic.
	Quick bool
	// Progress receives a line per step of a long run. If nil, nothing.
	Progress io.Writer
	// Out is where an experiment writes what explains a failure (such as
	// porcupine's visualization of a history that is not linearizable).
	// If empty, a new directory under the system's temporary directory.
	Out string
	// Logger receives the logs of the nodes and clients of system
	// experiments. If nil, they are discarded.
	Logger *slog.Logger
}

func (c *Config) seeds(full, quick int) int {
	switch {
	case c.Seeds > 0:
		return c.Seeds
	case c.Quick:
		return quick
	default:
		return full
	}
}

func (c *Config) progress(format string, args ...any) {
	if c.Progress != nil {
		fmt.Fprintf(c.Progress, format+"\n", args...)
	}
}

func (c *Config) logger() *slog.Logger {
	if c.Logger != nil {
		return c.Logger
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// Experiment is one study `shoal sim` can run.
type Experiment struct {
	Name    string
	Summary string
	Run     func(ctx context.Context, cfg Config) (*Report, error)
}

var experiments = map[string]Experiment{}

func register(e Experiment) { experiments[e.Name] = e }

// Experiments lists the experiments by name.
func Experiments() []Experiment {
	out := make([]Experiment, 0, len(experiments))
	for _, e := range experiments {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Lookup returns the experiment with the given name.
func Lookup(name string) (Experiment, bool) {
	e, ok := experiments[name]
	return e, ok
}
