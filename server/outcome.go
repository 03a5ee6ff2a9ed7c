package server

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/shard/fsm"
	"github.com/shoal-kv/shoal/wire"
)

// statusReply is the error reply of a state machine status.
type statusReply struct {
	code    wire.Code
	message string
}

// outcomes maps each status of a failed op onto the error reply a client
// gets: the one table between the two. The client maps the codes onto its
// sentinel errors (client/errors.go). StatusOK is success, and StatusEmpty
// (an acquire found nothing) is answered as a reply without a job.
var outcomes = map[fsm.Status]statusReply{
	fsm.StatusNotFound:       {wire.CodeNotFound, "not found"},
	fsm.StatusConflict:       {wire.CodeVersionConflict, "version conflict"},
	fsm.StatusAcked:          {wire.CodeAcked, "sequence number already acknowledged by the client"},
	fsm.StatusTooManyPending: {wire.CodeTooManyPending, "too many unacknowledged requests"},
	fsm.StatusInvalid:        {wire.CodeBadRequest, "invalid op"},
	fsm.StatusLeaseLost:      {wire.CodeLeaseLost, "lease lost: the token is not the job's live lease"},
	fsm.StatusWrongState:     {wire.CodeWrongState, "the job is not in the state the op needs"},
	fsm.StatusJobExists:      {wire.CodeJobExists, "another job has this id"},
	fsm.StatusFull:           {wire.CodeFull, "the shard is full: it holds its most jobs or schedules"},
	fsm.StatusSessionExpired: {wire.CodeSessionExpired,
		"session expired: the shard forgot the session of this retry, which may or may not have been applied"},
	fsm.StatusMoving:     {wire.CodeMoving, "the slot is moving between shards: retry shortly"},
	fsm.StatusWrongShard: {wire.CodeWrongShard, "the slot moved to another shard: refresh the map"},
}

// writeReply answers a write with the state machine's result: the key's
// version, and the job it acted on, if any; or its failure.
func writeReply(res fsm.Result) *wire.Message {
	switch res.Status {
	case fsm.StatusOK:
	case fsm.StatusEmpty:
		return resultReply(wire.Result{})
	default:
		o, ok := outcomes[res.Status]
		if !ok {
			return errorReply(wire.CodeServer, "the state machine answered with status %d", res.Status)
		}
		r := errorReply(o.code, "%s", o.message)
		r.Result.Version = res.Version // the key's version, for a conflict
		return r
	}
	r := wire.Result{Version: res.Version}
	if res.JobIDs != nil {
		r.Jobs = make([]wire.JobInfo, len(res.JobIDs))
		for i, id := range res.JobIDs {
			r.Jobs[i].ID = id
		}
	}
	if res.JobID != "" {
		r.Job = &wire.JobInfo{ID: res.JobID, Topic: res.Topic, Payload: res.Payload, Attempt: res.Attempt, Token: res.Token,
			Grant: res.Grant}
		if res.Deadline != 0 {
			r.Job.Deadline = time.Unix(0, res.Deadline)
		}
	}
	return resultReply(r)
}

// entryReply answers a get that read e.
func entryReply(e fsm.Entry) *wire.Message {
	if e.Version == 0 {
		return errorReply(wire.CodeNotFound, "not found")
	}
	return resultReply(wire.Result{Value: e.Value, Version: e.Version})
}

// argsReply answers a query that failed wire.CheckQuery.
func argsReply(err error) *wire.Message {
	switch {
	case errors.Is(err, shard.ErrTooLarge):
		return errorReply(wire.CodeTooLarge, "%v", err)
	case errors.Is(err, wire.ErrUnprovenClient):
		return errorReply(wire.CodeForbidden, "%v", err)
	}
	return errorReply(wire.CodeBadRequest, "%v", err)
}

// leaderErrorReply answers a request that viaLeader failed.
func leaderErrorReply(ctx context.Context, id shard.ID, err error) *wire.Message {
	switch {
	case !errors.Is(err, errGaveUp):
		return errorReply(wire.CodeServer, "shard %d: %v", id, err)
	case errors.Is(ctx.Err(), context.Canceled):
		return errorReply(wire.CodeUnavailable, "node shutting down")
	default:
		return errorReply(wire.CodeUnavailable, "shard %d unavailable: %s", id,
			strings.TrimPrefix(err.Error(), errGaveUp.Error()+": "))
	}
}

func errorReply(code wire.Code, format string, args ...any) *wire.Message {
	return &wire.Message{Type: wire.TypeError, Err: &wire.Error{Code: code, Message: fmt.Sprintf(format, args...)}}
}

func resultReply(r wire.Result) *wire.Message {
	return &wire.Message{Type: wire.TypeResponse, Result: r}
}
