package servertest

import (
	"context"
	"log/slog"
	"os"
	"time"
)

// TB is the part of testing.TB that New uses; *testing.T and *testing.B
// have it, and a test of the cleanup check itself hands in its own.
type TB interface {
	Helper()
	Cleanup(func())
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
	TempDir() string
}

// CheckTimeout bounds the Check that New's cleanup runs.
const CheckTimeout = 10 * time.Second

// New starts a cluster for a test, in the test's temporary directory, and
// fails the test if it does not become ready. Unless opts.Logger is set,
// the nodes log warnings to the test's log, shown only when it fails, or,
// with SHOAL_TEST_LOG set in the environment, everything from INFO up to
// stderr. On cleanup it checks that the replicas converged (Check),
// failing the test if they did not, and closes the cluster.
func New(t TB, opts Options) *Cluster {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	if opts.Logger == nil {
		opts.Logger = TestLogger(t)
	}
	c, err := Start(context.Background(), opts)
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), CheckTimeout)
		defer cancel()
		if err := c.Check(ctx); err != nil {
			t.Errorf("cluster check at cleanup: %v", err)
		}
		if err := c.Close(); err != nil {
			t.Errorf("closing the cluster: %v", err)
		}
	})
	return c
}

// TestLogger returns a logger for nodes and clients under test: warnings
// and errors to t's log, or with SHOAL_TEST_LOG set, everything from INFO
// up to stderr.
func TestLogger(t TB) *slog.Logger {
	if os.Getenv("SHOAL_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// testWriter sends log lines to the test's log.
type testWriter struct{ t TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Logf("%s", p[:len(p)-1])
	return len(p), nil
}

// WaitFor polls cond every few milliseconds until it holds, and fails the
// test, saying what it waited for, once limit has passed: tests wait on
// state they can observe, not on sleeps.
func WaitFor(t TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, limit)
		}
		time.Sleep(time.Millisecond)
	}
}
