package shard

import (
	"errors"
	"fmt"
	"strings"
)

// Limits of what the keyspace holds. A key of MaxKeySize with a value of
// MaxValueSize fits one datagram of the wire protocol with room for its
// envelope.
const (
	// MaxKeySize is the longest key, topic, job id, or uniqueness or
	// schedule key, in bytes.
	MaxKeySize = 1024
	// MaxValueSize is the longest value or job payload, in bytes (60 KiB).
	MaxValueSize = 60 << 10
)

// Errors of the checks below, testable with errors.Is. A name over
// MaxKeySize wraps both.
var (
	// ErrInvalidName: an empty key, topic, job id or job key, one over
	// MaxKeySize, or a topic with a NUL in it.
	ErrInvalidName = errors.New("shard: invalid name")
	// ErrTooLarge: a name over MaxKeySize, or a value or payload over
	// MaxValueSize.
	ErrTooLarge = errors.New("shard: too large")
)

// These checks are the one statement of what the keyspace accepts: the
// client runs them before it sends a request, and the node when one
// arrives; the state machine checks the names an op needs before it
// applies it.

// CheckKey reports whether key can name a value: 1 to MaxKeySize bytes of
// any kind.
func CheckKey(key string) error { return checkName("key", key) }

// CheckValue reports whether a value or job payload of size bytes fits.
func CheckValue(size int) error {
	if size > MaxValueSize {
		return fmt.Errorf("%w: value of %d bytes exceeds %d", ErrTooLarge, size, MaxValueSize)
	}
	return nil
}

// CheckTopic reports whether topic can name a job topic: 1 to MaxKeySize
// bytes, none of them NUL, which separates a topic from its job keys (see
// JobKey).
func CheckTopic(topic string) error {
	if err := checkName("topic", topic); err != nil {
		return err
	}
	if strings.IndexByte(topic, 0) >= 0 {
		return fmt.Errorf("%w: a topic may not contain NUL", ErrInvalidName)
	}
	return nil
}

// CheckJobID reports whether id can name a job: 1 to MaxKeySize bytes.
func CheckJobID(id string) error { return checkName("job id", id) }

// CheckJobKey reports whether key can be a uniqueness or schedule key: 1
// to MaxKeySize bytes.
func CheckJobKey(key string) error { return checkName("job key", key) }

func checkName(what, s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%w: empty %s (1 to %d bytes allowed)", ErrInvalidName, what, MaxKeySize)
	case len(s) > MaxKeySize:
		return fmt.Errorf("%w: %w: %s of %d bytes exceeds %d", ErrInvalidName, ErrTooLarge, what, len(s), MaxKeySize)
	}
	return nil
}
