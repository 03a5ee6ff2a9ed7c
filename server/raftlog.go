package server

import (
	"context"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"

	"github.com/hashicorp/go-hclog"
)

// raftLogger lets hashicorp/raft, which logs through hclog, write to the
// node's slog.Logger. Each raft group gets its own, named after its shard,
// at its own level (INFO by default: raft is chatty at DEBUG).
type raftLogger struct {
	log   *slog.Logger
	name  string
	level hclog.Level
	args  []any
}

var _ hclog.Logger = (*raftLogger)(nil)

func newRaftLogger(l *slog.Logger, name string, level hclog.Level) *raftLogger {
	return &raftLogger{log: l, name: name, level: level}
}

func slogLevel(l hclog.Level) slog.Level {
	switch {
	case l <= hclog.Trace:
		return slog.LevelDebug - 4
	case l == hclog.Debug:
		return slog.LevelDebug
	case l == hclog.Info:
		return slog.LevelInfo
	case l == hclog.Warn:
		return slog.LevelWarn
	default:
		return slog.LevelError
	}
}

func (r *raftLogger) Log(level hclog.Level, msg string, args ...any) {
	if level > hclog.Debug && closedConnError(args) {
		// raft reports reads from connections this node closed while
		// stopping as errors; they are expected, not failures.
		level = hclog.Debug
	}
	if level == hclog.Off || level < r.level {
		return
	}
	attrs := make([]any, 0, 2+len(r.args)+len(args))
	attrs = append(attrs, "logger", r.name)
	attrs = append(attrs, r.args...)
	attrs = append(attrs, args...)
	r.log.Log(context.Background(), slogLevel(level), msg, attrs...)
}

func closedConnError(args []any) bool {
	for _, a := range args {
		if err, ok := a.(error); ok && errors.Is(err, net.ErrClosed) {
			return true
		}
	}
	return false
}

func (r *raftLogger) Trace(msg string, args ...any) { r.Log(hclog.Trace, msg, args...) }
func (r *raftLogger) Debug(msg string, args ...any) { r.Log(hclog.Debug, msg, args...) }
func (r *raftLogger) Info(msg string, args ...any)  { r.Log(hclog.Info, msg, args...) }
func (r *raftLogger) Warn(msg string, args ...any)  { r.Log(hclog.Warn, msg, args...) }
func (r *raftLogger) Error(msg string, args ...any) { r.Log(hclog.Error, msg, args...) }

func (r *raftLogger) enabled(l hclog.Level) bool {
	return r.level <= l && r.log.Enabled(context.Background(), slogLevel(l))
}

func (r *raftLogger) IsTrace() bool { return r.enabled(hclog.Trace) }
func (r *raftLogger) IsDebug() bool { return r.enabled(hclog.Debug) }
func (r *raftLogger) IsInfo() bool  { return r.enabled(hclog.Info) }
func (r *raftLogger) IsWarn() bool  { return r.enabled(hclog.Warn) }
func (r *raftLogger) IsError() bool { return r.enabled(hclog.Error) }

func (r *raftLogger) ImpliedArgs() []any { return r.args }

func (r *raftLogger) With(args ...any) hclog.Logger {
	c := *r
	c.args = append(append([]any(nil), r.args...), args...)
	return &c
}

func (r *raftLogger) Name() string { return r.name }

func (r *raftLogger) Named(name string) hclog.Logger {
	c := *r
	if c.name != "" {
		c.name += "." + name
	} else {
		c.name = name
	}
	return &c
}

func (r *raftLogger) ResetNamed(name string) hclog.Logger {
	c := *r
	c.name = name
	return &c
}

// SetLevel is not supported: the level is fixed when the group starts, and
// changing it on a shared value would race with logging.
func (r *raftLogger) SetLevel(hclog.Level) {}

func (r *raftLogger) GetLevel() hclog.Level { return r.level }

func (r *raftLogger) StandardLogger(*hclog.StandardLoggerOptions) *log.Logger {
	return slog.NewLogLogger(r.log.With("logger", r.name).Handler(), slogLevel(r.level))
}

func (r *raftLogger) StandardWriter(opts *hclog.StandardLoggerOptions) io.Writer {
	return r.StandardLogger(opts).Writer()
}
