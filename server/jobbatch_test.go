package server_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/client"
	"github.com/shoal-kv/shoal/server/servertest"
	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/wire"
)

// A complete-and-acquire completes the job and leases the next one of its
// shard in one request; the same request again, at a follower and at the
// leader, answers with the same job and leases no second one.
func TestCompleteAndAcquireOverACluster(t *testing.T) {
	t.Parallel()
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 2, Replicas: 3})
	cl := newClient(t, c, client.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ids, err := cl.EnqueueBatch(ctx, []client.NewJob{{Topic: "t", Payload: []byte("1")}, {Topic: "t", Payload: []byte("2")},
		{Topic: "t", Payload: []byte("3")}})
	if err != nil {
		t.Fatal(err)
	}
	id := c.Map().SlotShard(shard.JobSlot(ids[0]))
	first, err := cl.Acquire(ctx, "t", 10*time.Second)
	if err != nil || first.ID != ids[0] {
		t.Fatalf("acquired %+v, %v; want %s, the first of the batch", first, err, ids[0])
	}
	leader := leader(t, c, id)
	var follower string
	for _, n := range c.Running() {
		if n != leader.ID() {
			follower = n
			break
		}
	}
	q := proven(wire.Message{Type: wire.TypeQuery, Op: wire.OpCompleteAcquire, Client: "worker", Seq: 1, Ack: 1,
		Args: wire.Args{JobID: first.ID, Token: first.Token, Grant: first.Grant, Topic: "t", Lease: 10 * time.Second}})
	var got []*wire.JobInfo
	for _, to := range []string{follower, follower, leader.ID()} {
		m := q
		r, _ := newRawClient(t, c, clientAddr(c, to)).do(&m, time.Second)
		if r.Type != wire.TypeResponse || r.Result.Job == nil {
			t.Fatalf("complete-and-acquire at %s: %+v %+v", to, r.Err, r.Result)
		}
		got = append(got, r.Result.Job)
	}
	next := got[0]
	if next.ID != ids[1] || next.Payload != "2" || next.Token <= first.Token || next.Grant == 0 {
		t.Fatalf("the next job %+v, want %s with a larger token than %d", next, ids[1], first.Token)
	}
	for i, j := range got[1:] {
		if *j != *next {
			t.Errorf("retry %d got %+v, want %+v", i+1, j, next)
		}
	}
	if st, err := cl.Stats(ctx, "t"); err != nil || st != (client.JobCounts{Ready: 1, Leased: 1, Done: 1}) {
		t.Errorf("stats after the retries: %+v, %v; want one done, one leased, one ready", st, err)
	}
	// The client's call goes on from the job leased next, to the end.
	j := &client.Job{ID: next.ID, Token: next.Token, Grant: next.Grant}
	last, err := cl.CompleteAndAcquire(ctx, j, "t", 10*time.Second)
	if err != nil || last == nil || last.ID != ids[2] || string(last.Payload) != "3" {
		t.Fatalf("CompleteAndAcquire: %+v, %v; want %s", last, err, ids[2])
	}
	if none, err := cl.CompleteAndAcquire(ctx, last, "t", 10*time.Second); none != nil || err != nil {
		t.Errorf("CompleteAndAcquire of the last job: %+v, %v; want no job and no error", none, err)
	}
	if _, err := cl.CompleteAndAcquire(ctx, last, "t", 10*time.Second); !errors.Is(err, client.ErrLeaseLost) {
		t.Errorf("completing the last job again: %v, want ErrLeaseLost", err)
	}
}

// A batch's jobs go to the shards of their keys (the keyless ones together
// to one), each in one entry; the ids come back in order, a uniqueness key
// held answering with its job's id, and a bad job fails the call before
// anything is sent.
func TestEnqueueBatchAcrossShards(t *testing.T) {
	t.Parallel()
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 4, Replicas: 3, Raft: failoverTiming})
	cl := newClient(t, c, client.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var jobs []client.NewJob
	for i := range 40 {
		j := client.NewJob{Topic: "b", Payload: []byte(fmt.Sprint(i))}
		if i%2 == 0 {
			j.Key = fmt.Sprint("k", i%20) // each key twice
		}
		jobs = append(jobs, j)
	}
	before := cl.Counters().Requests
	ids, err := cl.EnqueueBatch(ctx, jobs)
	if err != nil {
		t.Fatal(err)
	}
	keyed := map[shard.ID]bool{}
	keyless := map[shard.ID]bool{}
	byKey := map[string]string{}
	for i, id := range ids {
		s := c.Map().SlotShard(shard.JobSlot(id))
		if jobs[i].Key == "" {
			keyless[s] = true
			continue
		}
		if want := c.Map().SlotShard(shard.JobKeySlot("b", jobs[i].Key)); s != want {
			t.Errorf("job %d of key %s on shard %d, want %d", i, jobs[i].Key, s, want)
		}
		if first, ok := byKey[jobs[i].Key]; ok && first != id {
			t.Errorf("job %d of key %s has id %s, want the first's, %s", i, jobs[i].Key, id, first)
		}
		byKey[jobs[i].Key] = id
		keyed[s] = true
	}
	if len(keyless) != 1 {
		t.Errorf("the keyless jobs went to %d shards, want 1", len(keyless))
	}
	// One request per shard of keys, and one for the keyless jobs.
	if got := cl.Counters().Requests - before; got != uint64(len(keyed)+1) {
		t.Errorf("%d requests for keyed jobs on %d shards and keyless ones", got, len(keyed))
	}
	if st, err := cl.Stats(ctx, "b"); err != nil || st.Ready != 30 {
		t.Errorf("stats %+v, %v; want 30 jobs ready (20 keyless, 10 keys)", st, err)
	}
	again, err := cl.EnqueueBatch(ctx, jobs[:2])
	if err != nil || again[0] != ids[0] || again[1] == ids[1] {
		t.Errorf("a keyed job again: %v, %v; want %s, and a new keyless job", again, err, ids[0])
	}
	before = cl.Counters().Requests
	bad := []client.NewJob{{Topic: "b"}, {Topic: ""}}
	if _, err := cl.EnqueueBatch(ctx, bad); !errors.Is(err, client.ErrInvalidKey) {
		t.Errorf("a batch with a job without a topic: %v, want ErrInvalidKey", err)
	}
	if got := cl.Counters().Requests - before; got != 0 {
		t.Errorf("a bad batch sent %d requests", got)
	}
}

// A node refuses a batch whose jobs are not all of one shard, by id or by
// uniqueness key, and stores none of it.
func TestEnqueueBatchOfOneShard(t *testing.T) {
	t.Parallel()
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 4, Replicas: 3, Raft: failoverTiming})
	smap := c.Map()
	other := 0
	for smap.SlotShard(other) == smap.SlotShard(0) {
		other++
	}
	key := "k"
	for i := 0; smap.SlotShard(shard.JobKeySlot("t", key)) == smap.SlotShard(0); i++ {
		key = fmt.Sprint("k", i)
	}
	rc := newRawClient(t, c, clientAddr(c, "n1"))
	for i, batch := range [][]wire.BatchJob{
		{{ID: shard.NewJobID(0, "a"), Topic: "t"}, {ID: shard.NewJobID(other, "b"), Topic: "t"}},
		{{ID: shard.NewJobID(0, "a"), Topic: "t"}, {ID: shard.NewJobID(0, "b"), Topic: "t", Unique: key}},
	} {
		m := proven(wire.Message{Type: wire.TypeQuery, Op: wire.OpEnqueueBatch, Client: "batcher", Seq: uint64(i + 1), Ack: 1,
			Args: wire.Args{Batch: batch}})
		if r, _ := rc.do(&m, time.Second); r.Type != wire.TypeError || r.Err.Code != wire.CodeWrongShard {
			t.Errorf("batch %d across shards: %+v %+v, want a wrong-shard error", i, r.Err, r.Result)
		}
	}
	cl := newClient(t, c, client.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if st, err := cl.Stats(ctx, "t"); err != nil || st != (client.JobCounts{}) {
		t.Errorf("stats after refused batches: %+v, %v; want none", st, err)
	}
}
