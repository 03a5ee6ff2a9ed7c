package sim

import (
	"context"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// runQuick runs a system experiment in its reduced form and checks its
// report; -short skips it.
func runQuick(t *testing.T, run func(context.Context, Config) (*Report, error)) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs real clusters")
	}
	r, err := run(context.Background(), Config{Quick: true, Seed: 1, Progress: &testLogWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	checkReport(t, r)
}

// checkReport logs r and fails t unless every check passed and its tables
// and figures write out.
func checkReport(t *testing.T, r *Report) {
	t.Helper()
	var out strings.Builder
	r.Print(&out)
	t.Log("\n" + out.String())
	if !r.Pass() {
		t.Error(r.Verdict())
	}
	if _, err := r.Write(t.TempDir()); err != nil {
		t.Error(err)
	}
}

// testLogWriter logs an experiment's progress lines.
type testLogWriter struct{ t *testing.T }

func (w *testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
