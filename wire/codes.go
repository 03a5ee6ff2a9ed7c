package wire

import "fmt"

// Code classifies an error reply. 201 to 204 are KRPC's; the rest borrow
// the meaning of the HTTP status with the same number. Each code means one
// thing: the node maps the state machine's outcomes onto them in one table
// (server/outcome.go), and the client maps them onto its sentinel errors in
// another (client/errors.go).
type Code int

// The error codes.
const (
	CodeGeneric         Code = 201 // any other failure
	CodeServer          Code = 202 // a fault inside the node
	CodeProtocol        Code = 203 // malformed message or wrong argument types
	CodeUnknownOp       Code = 204 // the op is not one this node serves
	CodeBadRequest      Code = 400 // well formed, but the arguments are invalid
	CodeForbidden       Code = 403 // the query names a client id without its proof
	CodeNotFound        Code = 404 // the key or job does not exist
	CodeVersionConflict Code = 409 // compare-and-set found another version
	CodeAcked           Code = 410 // the client already acknowledged this sequence number
	CodeWrongState      Code = 412 // the job is not in the state the op needs (a requeue of a job that is not dead)
	CodeTooLarge        Code = 413 // key, value or message over the limits
	CodeWrongShard      Code = 421 // the node holds no replica of the key's shard
	CodeJobExists       Code = 422 // an enqueue named the id of another job
	CodeLeaseLost       Code = 423 // the token is not the job's live lease (Locked)
	CodeMoving          Code = 425 // the slot is moving between shards: retry shortly (Too Early)
	CodeTooManyPending  Code = 429 // the client has too many unacknowledged requests
	CodeSessionExpired  Code = 440 // a retry whose session the shard forgot: it may or may not have been applied
	CodeUnavailable     Code = 503 // no leader, or the node ran out of time
	CodeFull            Code = 507 // the shard holds its most jobs or schedules (Insufficient Storage)
)

// Error is an error reply: KRPC's [code, message].
type Error struct {
	Code    Code
	Message string
}

// Error formats the reply as "code message".
func (e *Error) Error() string {
	return fmt.Sprintf("%d %s", e.Code, e.Message)
}
