package client

import (
	"errors"
	"fmt"

	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/wire"
)

// Errors of the client, testable with errors.Is. Errors that nodes return
// are *Error values that match these by their code (see codeErrors).
var (
	// ErrNotFound: the key, or the job, does not exist.
	ErrNotFound = errors.New("shoal: not found")
	// ErrVersionConflict: CompareAndSet found the key at another version.
	ErrVersionConflict = errors.New("shoal: version conflict")
	// ErrUnavailable: no node answered within the attempts, or the shard
	// had no leader in time. A write that failed this way may or may not
	// have been applied, and may still be applied a little later (a
	// delayed datagram, an entry the next leader commits): settle it with
	// a write that is safe to repeat, not with a read.
	ErrUnavailable = errors.New("shoal: unavailable")
	// ErrValueTooLarge: a value or payload over shard.MaxValueSize.
	ErrValueTooLarge = errors.New("shoal: value too large")
	// ErrInvalidKey: an empty key, topic, job id or job key, one over
	// shard.MaxKeySize, or a topic with a NUL in it.
	ErrInvalidKey = errors.New("shoal: invalid key")
	// ErrInvalidArgument: an argument out of its range other than a key
	// or value: a lease under a millisecond, or a schedule's interval
	// under shard.MinScheduleInterval (a second), say.
	ErrInvalidArgument = errors.New("shoal: invalid argument")
	// ErrTooManyPending: the client has too many writes without a reply.
	ErrTooManyPending = errors.New("shoal: too many unacknowledged writes")
	// ErrLeaseLost: the job's lease is no longer the caller's.
	ErrLeaseLost = errors.New("shoal: lease lost")
	// ErrNoJob: Acquire found nothing ready before its context ended.
	ErrNoJob = errors.New("shoal: no job ready")
	// ErrWrongState: the job is not in the state the call needs: Requeue
	// of a job that is not dead.
	ErrWrongState = errors.New("shoal: job in the wrong state")
	// ErrJobExists: an enqueue named the id of another job, of another
	// topic or payload.
	ErrJobExists = errors.New("shoal: another job has this id")
	// ErrForbidden: a node refused a request naming a client id without
	// its proof (wire.ClientIdentity): another client's session.
	ErrForbidden = errors.New("shoal: forbidden")
	// ErrAuth: no cluster secret was found, or it is malformed or not
	// the cluster's; its text says "authentication failed".
	ErrAuth = wire.ErrAuth
	// ErrFull: the shard holds as many jobs (of every state, dead ones
	// included: 100,000) or schedules (1,000) as it may; nothing was
	// stored. Room comes back as jobs complete and schedules stop.
	ErrFull = errors.New("shoal: shard full")
	// ErrSessionExpired: a retried write reached a shard that has since
	// forgotten this client's session (it keeps a bounded number, the
	// idle longest going first), so it could not tell whether an earlier
	// attempt was applied, and refused it. The write may or may not have
	// been applied: settle it like ErrUnavailable.
	ErrSessionExpired = errors.New("shoal: session expired")
	// ErrClosed: the client was closed.
	ErrClosed = errors.New("shoal: client closed")
)

// codeErrors maps each code of a node's error reply that has a sentinel
// onto it: the one table between the two. The node maps its outcomes onto
// the codes in server/outcome.go.
var codeErrors = map[wire.Code]error{
	wire.CodeNotFound:        ErrNotFound,
	wire.CodeVersionConflict: ErrVersionConflict,
	wire.CodeUnavailable:     ErrUnavailable,
	wire.CodeMoving:          ErrUnavailable,
	wire.CodeTooLarge:        ErrValueTooLarge,
	wire.CodeBadRequest:      ErrInvalidArgument,
	wire.CodeTooManyPending:  ErrTooManyPending,
	wire.CodeLeaseLost:       ErrLeaseLost,
	wire.CodeWrongState:      ErrWrongState,
	wire.CodeJobExists:       ErrJobExists,
	wire.CodeForbidden:       ErrForbidden,
	wire.CodeFull:            ErrFull,
	wire.CodeSessionExpired:  ErrSessionExpired,
}

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
	s, ok := codeErrors[e.Code]
	return ok && s == target
}

// retryable reports whether another attempt, perhaps on another node, may
// succeed where this reply failed.
func (e *Error) retryable() bool {
	switch e.Code {
	case wire.CodeUnavailable, wire.CodeWrongShard, wire.CodeServer, wire.CodeMoving:
		return true
	}
	return false
}

// checkArgs checks the arguments of a call of op before anything is sent,
// by the rules the node applies (wire.CheckArgs), and wraps a failure in
// the matching sentinel.
func checkArgs(op wire.Op, a *wire.Args) error {
	err := wire.CheckArgs(op, a)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, shard.ErrInvalidName):
		return fmt.Errorf("%w: %w", ErrInvalidKey, err)
	case errors.Is(err, shard.ErrTooLarge):
		return fmt.Errorf("%w: %w", ErrValueTooLarge, err)
	default:
		return fmt.Errorf("%w: %w", ErrInvalidArgument, err)
	}
}
