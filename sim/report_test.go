package sim

import (
	"path/filepath"
	"testing"
	"time"
)

// A log-scale figure whose points are all equal, or none of them positive,
// still draws.
func TestLogFigureWithoutRange(t *testing.T) {
	for _, y := range []float64{3, 0} {
		f := Figure{Name: "f", LogY: true, Series: []Series{{Name: "s", X: []float64{1, 2}, Y: []float64{y, y}}}}
		if err := f.plot(filepath.Join(t.TempDir(), "f.png")); err != nil {
			t.Errorf("y=%v: %v", y, err)
		}
	}
}

func TestPercentiles(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- {
		d = append(d, time.Duration(i))
	}
	got := Percentiles(d, 50, 99, 99.9, 100, 0)
	want := []time.Duration{50, 99, 100, 100, 1}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("percentiles %v, want %v", got, want)
			break
		}
	}
	if d[0] != 100 {
		t.Error("the input was reordered")
	}
	if got := Percentiles(nil, 50); got[0] != 0 {
		t.Errorf("of none: %v", got)
	}
}
