package client

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/wire"
)

// Validate names the field at fault, and New refuses what it refuses
// before it sends anything.
func TestConfigValidate(t *testing.T) {
	ok := Config{Seeds: []string{"127.0.0.1:7000"}}
	if err := ok.Validate(); err != nil {
		t.Fatalf("zero fields but the seeds: %v", err)
	}
	d := DefaultConfig()
	d.Seeds = ok.Seeds
	if err := d.Validate(); err != nil || d.Attempts != DefaultAttempts || d.Picker == nil {
		t.Fatalf("DefaultConfig: %+v, %v", d, err)
	}
	for _, tc := range []struct {
		change func(*Config)
		want   string
	}{
		{func(c *Config) { c.Seeds = nil }, "no seeds"},
		{func(c *Config) { c.Seeds = []string{"nowhere"} }, `seed "nowhere"`},
		{func(c *Config) { c.Attempts = -1 }, "Attempts is -1"},
		{func(c *Config) { c.NodeTimeout = -time.Second }, "NodeTimeout is negative"},
		{func(c *Config) { c.MinAttemptTimeout = 3 * time.Second }, "MinAttemptTimeout 3s is above MaxAttemptTimeout 2s"},
		{func(c *Config) { c.MinAttemptTimeout, c.MaxAttemptTimeout = time.Second, 500*time.Millisecond },
			"MinAttemptTimeout 1s is above MaxAttemptTimeout 500ms"},
		{func(c *Config) { c.Insecure, c.SecretFile = true, "secret" }, "Insecure with a secret"},
	} {
		c := ok
		tc.change(&c)
		err := c.Validate()
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate() = %v, want ErrInvalidConfig saying %q", err, tc.want)
			continue
		}
		if _, nerr := New(context.Background(), c); nerr == nil || nerr.Error() != err.Error() {
			t.Errorf("New: %v, want %v", nerr, err)
		}
	}
	// ReplyGrace may be negative: no grace.
	c := ok
	c.ReplyGrace = -1
	if err := c.Validate(); err != nil {
		t.Errorf("negative ReplyGrace: %v", err)
	}
}

// Each code of a node's error reply that has a sentinel matches it, and
// no other.
func TestErrorMatchesItsSentinelOnly(t *testing.T) {
	sentinels := []error{ErrNotFound, ErrVersionConflict, ErrUnavailable, ErrValueTooLarge, ErrInvalidKey,
		ErrInvalidArgument, ErrTooManyPending, ErrLeaseLost, ErrNoJob, ErrWrongState, ErrJobExists, ErrFull,
		ErrSessionExpired, ErrForbidden, ErrClosed}
	for code, want := range codeErrors {
		e := &Error{Code: code}
		for _, s := range sentinels {
			if got := errors.Is(e, s); got != (s == want) {
				t.Errorf("code %d: errors.Is(%v) = %v", code, s, got)
			}
		}
	}
	for _, code := range []wire.Code{wire.CodeGeneric, wire.CodeServer, wire.CodeWrongShard, wire.CodeAcked} {
		for _, s := range sentinels {
			if errors.Is(&Error{Code: code}, s) {
				t.Errorf("code %d matches %v", code, s)
			}
		}
	}
}
