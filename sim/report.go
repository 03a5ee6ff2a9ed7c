package sim

import (
	"encoding/csv"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// Report is what an experiment found: tables to read, figures to plot, and
// checks of measurements against what theory or a published result
// predicts.
type Report struct {
	Experiment string
	// Setup says in a line or two what was run.
	Setup   string
	Tables  []Table
	Figures []Figure
	Checks  []Check
	// Notes are findings stated as measured, without a check: results no
	// theory predicts.
	Notes []string
}

// Table is a table of results; each figure also writes one as CSV.
type Table struct {
	Name   string // file name without extension
	Title  string
	Header []string
	Rows   [][]string
}

// Figure is a line plot.
type Figure struct {
	Name           string // file name without extension
	Title          string
	XLabel, YLabel string
	LogY           bool
	Series         []Series
	// Marks are events on the x axis, each drawn as a dashed vertical
	// line with its label at the top.
	Marks []Mark
}

// Mark is an event at X on a figure's x axis.
type Mark struct {
	X     float64
	Label string
}

// Series is one line of a figure; Err, if set, is the half-width of the
// confidence interval of each point. A series without a Name has no entry
// in the legend.
type Series struct {
	Name string
	X, Y []float64
	Err  []float64
}

// Check compares a measurement, with its 95% confidence interval over
// seeds, against an expected value and the band the measurement must fall
// in to pass.
type Check struct {
	Name              string
	Measured, CI      float64 // mean and half-width
	Expected          float64
	BandLow, BandHigh float64
	Source            string // where the expectation comes from
	Pass              bool
}

// NewCheck builds a check that passes when the measured mean lies in
// [low, high].
func NewCheck(name string, m Estimate, expected, low, high float64, source string) Check {
	return Check{
		Name: name, Measured: m.Mean, CI: m.HalfWidth, Expected: expected,
		BandLow: low, BandHigh: high, Source: source,
		Pass: m.Mean >= low && m.Mean <= high,
	}
}

// Pass reports whether every check passed.
func (r *Report) Pass() bool {
	for _, c := range r.Checks {
		if !c.Pass {
			return false
		}
	}
	return true
}

// Verdict is the report's last line.
func (r *Report) Verdict() string {
	failed := 0
	for _, c := range r.Checks {
		if !c.Pass {
			failed++
		}
	}
	if failed == 0 {
		return fmt.Sprintf("verdict: PASS — all %d checks within their expected bands", len(r.Checks))
	}
	return fmt.Sprintf("verdict: FAIL — %d of %d checks outside their expected bands", failed, len(r.Checks))
}

// Print writes the report for people.
func (r *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "%s: %s\n", r.Experiment, r.Setup)
	for _, t := range r.Tables {
		fmt.Fprintf(w, "\n%s\n", t.Title)
		tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, strings.Join(t.Header, "\t")+"\t")
		for _, row := range t.Rows {
			fmt.Fprintln(tw, strings.Join(row, "\t")+"\t")
		}
		tw.Flush()
	}
	if len(r.Checks) > 0 {
		fmt.Fprintln(w, "\nchecks (measured mean ± 95% CI over seeds, against the expected value and band):")
		for _, c := range r.Checks {
			mark := "ok  "
			if !c.Pass {
				mark = "FAIL"
			}
			fmt.Fprintf(w, "  %s %s: measured %s ± %s, expected %s (band %s to %s; %s)\n", mark, c.Name,
				num(c.Measured), num(c.CI), num(c.Expected), num(c.BandLow), num(c.BandHigh), c.Source)
		}
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "\nnote: %s\n", n)
	}
	fmt.Fprintf(w, "\n%s\n", r.Verdict())
}

func num(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "∞"
	case math.IsInf(v, -1):
		return "-∞"
	case v != 0 && (math.Abs(v) < 0.01 || math.Abs(v) >= 1e6):
		return fmt.Sprintf("%.3g", v)
	default:
		return fmt.Sprintf("%.4g", v)
	}
}

// Write writes every table as CSV and every figure as a PNG plot (and its
// data as CSV) into dir, and returns the paths written.
func (r *Report) Write(dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var paths []string
	for _, t := range r.Tables {
		p := filepath.Join(dir, t.Name+".csv")
		if err := writeCSV(p, t.Header, t.Rows); err != nil {
			return paths, err
		}
		paths = append(paths, p)
	}
	for _, f := range r.Figures {
		p := filepath.Join(dir, f.Name+".png")
		if err := f.plot(p); err != nil {
			return paths, fmt.Errorf("sim: plotting %s: %w", f.Name, err)
		}
		paths = append(paths, p)
		p = filepath.Join(dir, f.Name+".csv")
		if err := writeCSV(p, []string{"series", "x", "y", "ci"}, f.rows()); err != nil {
			return paths, err
		}
		paths = append(paths, p)
	}
	return paths, nil
}

func writeCSV(path string, header []string, rows [][]string) error {
	file, err := os.Create(path)
	if err != nil {
		return err
	}
	w := csv.NewWriter(file)
	_ = w.Write(header)
	_ = w.WriteAll(rows)
	if err := w.Error(); err != nil {
		file.Close()
		return err
	}
	return file.Close()
}

func (f *Figure) rows() [][]string {
	var rows [][]string
	for _, s := range f.Series {
		for i := range s.X {
			ci := ""
			if s.Err != nil {
				ci = fmt.Sprint(s.Err[i])
			}
			rows = append(rows, []string{s.Name, fmt.Sprint(s.X[i]), fmt.Sprint(s.Y[i]), ci})
		}
	}
	return rows
}

// plot draws the figure as a PNG.
func (f *Figure) plot(path string) error {
	p := plot.New()
	p.Title.Text = f.Title
	p.X.Label.Text = f.XLabel
	p.Y.Label.Text = f.YLabel
	if f.LogY {
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	}
	p.Legend.Top = true
	p.Add(plotter.NewGrid())
	for i, s := range f.Series {
		pts := make(plotter.XYs, 0, len(s.X))
		var errs []float64
		for j := range s.X {
			y := s.Y[j]
			if f.LogY && y <= 0 {
				continue // no place on a log scale
			}
			pts = append(pts, plotter.XY{X: s.X[j], Y: y})
			if s.Err != nil {
				e := s.Err[j]
				if f.LogY {
					e = math.Min(e, y*0.999)
				}
				errs = append(errs, e)
			}
		}
		if len(pts) == 0 {
			continue
		}
		line, points, err := plotter.NewLinePoints(pts)
		if err != nil {
			return err
		}
		c := plotutil.Color(i)
		line.Color, points.Color = c, c
		points.Shape = plotutil.Shape(i)
		p.Add(line, points)
		if s.Name != "" {
			p.Legend.Add(s.Name, line, points)
		}
		if s.Err != nil {
			bars, err := plotter.NewYErrorBars(errorBars{pts, errs})
			if err != nil {
				return err
			}
			bars.Color = color.Gray{Y: 128}
			p.Add(bars)
		}
	}
	// gonum/plot widens an empty range by ±1, which can reach 0, and has
	// no range at all without a point.
	switch {
	case f.LogY && p.Y.Max <= 0:
		p.Y.Min, p.Y.Max = 1, 10
	case f.LogY && p.Y.Min == p.Y.Max:
		p.Y.Min, p.Y.Max = p.Y.Min/2, p.Y.Max*2
	}
	if err := f.addMarks(p); err != nil {
		return err
	}
	return p.Save(7*vg.Inch, 4.5*vg.Inch, path)
}

// addMarks draws f's marks across p's y range as it stands, the data's.
func (f *Figure) addMarks(p *plot.Plot) error {
	if len(f.Marks) == 0 {
		return nil
	}
	lo, hi := p.Y.Min, p.Y.Max
	var tops plotter.XYLabels
	for _, m := range f.Marks {
		line, err := plotter.NewLine(plotter.XYs{{X: m.X, Y: lo}, {X: m.X, Y: hi}})
		if err != nil {
			return err
		}
		line.Color = color.Gray{Y: 160}
		line.Dashes = []vg.Length{vg.Points(3), vg.Points(3)}
		p.Add(line)
		tops.XYs = append(tops.XYs, plotter.XY{X: m.X, Y: hi})
		tops.Labels = append(tops.Labels, m.Label)
	}
	labels, err := plotter.NewLabels(tops)
	if err != nil {
		return err
	}
	p.Add(labels)
	return nil
}

// errorBars gives gonum/plot the points and their symmetric error.
type errorBars struct {
	pts  plotter.XYs
	errs []float64
}

func (e errorBars) Len() int                    { return len(e.pts) }
func (e errorBars) XY(i int) (float64, float64) { return e.pts[i].X, e.pts[i].Y }
func (e errorBars) YError(i int) (float64, float64) {
	return e.errs[i], e.errs[i]
}
