package client

import (
	"errors"
	"fmt"

	"github.com/shoal-kv/shoal/wire"
)

// Errors of the client, testable with errors.Is. Errors that nodes return
// are *Error values that match these by their code.
var (
	// ErrNotFound: the key does not exist.
	ErrNotFound = errors.New("shoal: key not found")
	// ErrVersionConflict: CompareAndSet found the key at another version.
	ErrVersionConflict = errors.New("shoal: version conflict")
	// ErrUnavailable: no node answered within the attempts, or the shard
	// had no leader in time. A write that failed this way may or may not
	// have been applied, and may still be applied a little later (a
	// delayed datagram, an entry the next leader commits): settle it with
	// a write that is safe to repeat, not with a read.
	ErrUnavailable = errors.New("shoal: unavailable")
	// ErrValueTooLarge: a value over shard.MaxValueSize.
	ErrValueTooLarge = errors.New("shoal: value too large")
	// ErrInvalidKey: an empty key, or one over shard.MaxKeySize.
	ErrInvalidKey = errors.New("shoal: invalid key")
	// ErrTooManyPending: the client has too many writes without a reply.
	ErrTooManyPending = errors.New("shoal: too many unacknowledged writes")
	// ErrClosed: the client was closed.
	ErrClosed = errors.New("shoal: client closed")
)

// Error is an error reply from a node.
type Error struct {
	// Node is the id of the node that replied.
	Node string
	// Code and Message are the node's [code, message].
	Code    wire.Code
	Message string
	// Version is the key's current version, for a version conflict.
	Version uint64
}

// Error formats the node's reply with the node's id.
func (e *Error) Error() string {
	return fmt.Sprintf("shoal: node %s: %s (%d)", e.Node, e.Message, e.Code)
}

// Is matches the sentinel error of e's code.
func (e *Error) Is(target error) bool {
	switch e.Code {
	case wire.CodeNotFound:
		return target == ErrNotFound
	case wire.CodeConflict:
		return target == ErrVersionConflict
	case wire.CodeUnavailable:
		return target == ErrUnavailable
	case wire.CodeTooLarge:
		return target == ErrValueTooLarge
	case wire.CodeTooManyPending:
		return target == ErrTooManyPending
	case wire.CodeLeaseLost:
		return target == ErrLeaseLost
	}
	return false
}

// retryable reports whether another attempt, perhaps on another node, may
// succeed where this reply failed.
func (e *Error) retryable() bool {
	switch e.Code {
	case wire.CodeUnavailable, wire.CodeWrongShard, wire.CodeServer:
		return true
	}
	return false
}
