package sim

import (
	"testing"

	"github.com/anishathalye/porcupine"
)

// op builds a history entry; an unknown outcome returns at the end of time,
// as history.add records it.
func op(proc int, call, ret int64, in kvInput, out kvOutput) porcupine.Operation {
	if out.Unknown {
		ret = 1 << 62
	}
	return porcupine.Operation{ClientId: proc, Call: call, Return: ret, Input: in, Output: out}
}

func TestKVModel(t *testing.T) {
	set := func(v string) kvInput { return kvInput{Op: "set", Key: "k", Value: v} }
	get := kvInput{Op: "get", Key: "k"}
	del := kvInput{Op: "del", Key: "k"}
	cas := func(ver uint64, v string) kvInput { return kvInput{Op: "cas", Key: "k", Version: ver, Value: v} }
	for _, tc := range []struct {
		name string
		ops  []porcupine.Operation
		want porcupine.CheckResult
	}{
		{"sequential", []porcupine.Operation{
			op(0, 0, 1, set("a"), kvOutput{OK: true, Version: 5}),
			op(0, 2, 3, get, kvOutput{OK: true, Value: "a", Version: 5}),
			op(0, 4, 5, cas(5, "b"), kvOutput{OK: true, Version: 9}),
			op(0, 6, 7, del, kvOutput{OK: true}),
			op(0, 8, 9, get, kvOutput{}),
			op(0, 10, 11, set("c"), kvOutput{OK: true, Version: 12}),
		}, porcupine.Ok},
		{"stale read", []porcupine.Operation{
			op(0, 0, 1, set("a"), kvOutput{OK: true, Version: 5}),
			op(0, 2, 3, set("b"), kvOutput{OK: true, Version: 6}),
			op(1, 4, 5, get, kvOutput{OK: true, Value: "a", Version: 5}),
		}, porcupine.Illegal},
		{"concurrent read of either", []porcupine.Operation{
			op(0, 0, 1, set("a"), kvOutput{OK: true, Version: 5}),
			op(0, 2, 5, set("b"), kvOutput{OK: true, Version: 6}),
			op(1, 3, 4, get, kvOutput{OK: true, Value: "a", Version: 5}),
		}, porcupine.Ok},
		{"version goes back", []porcupine.Operation{
			op(0, 0, 1, set("a"), kvOutput{OK: true, Version: 5}),
			op(0, 2, 3, set("b"), kvOutput{OK: true, Version: 4}),
		}, porcupine.Illegal},
		{"unknown write seen later", []porcupine.Operation{
			op(0, 0, 1, set("a"), kvOutput{OK: true, Version: 5}),
			op(1, 2, 0, set("b"), kvOutput{Unknown: true}),
			op(0, 3, 4, get, kvOutput{OK: true, Value: "a", Version: 5}),
			op(0, 5, 6, get, kvOutput{OK: true, Value: "b", Version: 8}),
			op(0, 7, 8, get, kvOutput{OK: true, Value: "b", Version: 8}),
		}, porcupine.Ok},
		{"unknown write seen, then unseen", []porcupine.Operation{
			op(0, 0, 1, set("a"), kvOutput{OK: true, Version: 5}),
			op(1, 2, 0, set("b"), kvOutput{Unknown: true}),
			op(0, 3, 4, get, kvOutput{OK: true, Value: "b", Version: 8}),
			op(0, 5, 6, get, kvOutput{OK: true, Value: "a", Version: 5}),
		}, porcupine.Illegal},
		{"unknown write takes a version below an earlier one", []porcupine.Operation{
			op(0, 0, 1, set("a"), kvOutput{OK: true, Version: 5}),
			op(1, 2, 0, set("b"), kvOutput{Unknown: true}),
			op(0, 3, 4, get, kvOutput{OK: true, Value: "b", Version: 5}),
		}, porcupine.Illegal},
		{"cas on a stale version applies", []porcupine.Operation{
			op(0, 0, 1, set("a"), kvOutput{OK: true, Version: 5}),
			op(0, 2, 3, set("b"), kvOutput{OK: true, Version: 6}),
			op(1, 4, 5, cas(5, "c"), kvOutput{OK: true, Version: 7}),
		}, porcupine.Illegal},
		{"cas conflict names the version", []porcupine.Operation{
			op(0, 0, 1, set("a"), kvOutput{OK: true, Version: 5}),
			op(1, 2, 3, cas(4, "c"), kvOutput{Conflict: true, Version: 5}),
			op(1, 4, 5, cas(0, "c"), kvOutput{Conflict: true, Version: 5}),
		}, porcupine.Ok},
		{"cas conflict on a version that held", []porcupine.Operation{
			op(0, 0, 1, set("a"), kvOutput{OK: true, Version: 5}),
			op(1, 2, 3, cas(5, "c"), kvOutput{Conflict: true, Version: 5}),
		}, porcupine.Illegal},
		{"create only if absent", []porcupine.Operation{
			op(0, 0, 1, cas(0, "a"), kvOutput{OK: true, Version: 3}),
			op(1, 2, 3, cas(0, "b"), kvOutput{OK: true, Version: 4}),
		}, porcupine.Illegal},
		{"delete of a missing key", []porcupine.Operation{
			op(0, 0, 1, del, kvOutput{}),
			op(0, 2, 3, set("a"), kvOutput{OK: true, Version: 2}),
			op(0, 4, 5, del, kvOutput{}),
		}, porcupine.Illegal},
		{"unknown delete", []porcupine.Operation{
			op(0, 0, 1, set("a"), kvOutput{OK: true, Version: 2}),
			op(1, 2, 0, del, kvOutput{Unknown: true}),
			op(0, 3, 4, get, kvOutput{}),
			op(0, 5, 6, set("b"), kvOutput{OK: true, Version: 9}),
		}, porcupine.Ok},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := porcupine.CheckOperations(kvModel.ToModel(), tc.ops); got != (tc.want == porcupine.Ok) {
				t.Errorf("linearizable = %v, want %v", got, tc.want == porcupine.Ok)
			}
		})
	}
}
