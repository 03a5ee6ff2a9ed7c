package server

import (
	"io"
	"log/slog"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// quietLogger drops what the unit tests of this package log; the cluster
// tests (package server_test) log through servertest.TestLogger.
var quietLogger = slog.New(slog.NewTextHandler(io.Discard, nil))
