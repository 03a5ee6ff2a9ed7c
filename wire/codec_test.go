package wire

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackpal/bencode-go"
	"github.com/shoal-kv/shoal/shard"
)

func testMap(t testing.TB) *shard.Map {
	m, err := shard.NewEvenMap([]string{"n1", "n2", "n3"}, 4, 3)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// sampleMessages has one message of every type and op, with every field
// they carry set to something other than its zero value.
func sampleMessages(t testing.TB) map[string]*Message {
	query := func(op Op, a Args) *Message {
		return &Message{Type: TypeQuery, TxID: 42, Op: op, Client: "3f9ac2d1e0b4a7c6", Seq: 9, Ack: 7, Timeout: 25 * time.Millisecond, Args: a}
	}
	reply := func(r Result) *Message {
		return &Message{Type: TypeResponse, TxID: 42, Node: "n2", Activity: 130, Result: r}
	}
	retry := func(m *Message, age time.Duration) *Message {
		m.Age = age
		return m
	}
	return map[string]*Message{
		"get":          query(OpGet, Args{Key: "hello"}),
		"get stale":    query(OpGet, Args{Key: "hello", Stale: true}),
		"set":          query(OpSet, Args{Key: "hello", Value: "world"}),
		"set binary":   query(OpSet, Args{Key: "k\x00\xff", Value: "\x00\x01\xfe\xff" + strings.Repeat("v", shard.MaxValueSize-4)}),
		"del":          query(OpDelete, Args{Key: "hello"}),
		"cas":          query(OpCompareAndSet, Args{Key: "hello", Value: "w2", Version: 5}),
		"topology":     query(OpTopology, Args{}),
		"ping":         query(OpPing, Args{}),
		"status":       query(OpStatus, Args{}),
		"unknown op":   query("frobnicate", Args{Key: "x"}),
		"value":        reply(Result{Value: "world", Version: 5}),
		"empty result": reply(Result{}),
		"topology reply": reply(Result{Topology: &Topology{
			Nodes: []NodeAddr{{ID: "n1", Addr: "127.0.0.1:7001"}, {ID: "n2", Addr: "[::1]:7002"}},
			Map:   testMap(t),
		}}),
		"status reply": reply(Result{Status: &NodeStatus{ID: "n2", Activity: 3, Shards: []ShardStatus{
			{ID: 0, State: "Leader", Leader: "n2", Applied: 99, Keys: 12},
			{ID: 3, State: "Follower", Leader: "n1", Applied: 7},
		}}}),
		"error": {Type: TypeError, TxID: 42, Node: "n2", Activity: 130, Err: &Error{Code: CodeNotFound, Message: "not found"}},
		"forwarded": {Type: TypeResponse, TxID: 42, Node: "n2", Activity: 130, Result: Result{Version: 3},
			Leader: &LeaderHint{Shard: 5, Node: "n1"}},
		"forwarded error": {Type: TypeError, TxID: 42, Node: "n2", Activity: 130, Leader: &LeaderHint{Shard: 0, Node: "n3"},
			Err: &Error{Code: CodeUnavailable, Message: "shard 0 unavailable"}},
		"conflict": {Type: TypeError, TxID: 42, Node: "n2", Activity: 1,
			Err: &Error{Code: CodeVersionConflict, Message: "version conflict"}, Result: Result{Version: 8}},
		"heartbeat": {Type: TypeHeartbeat, Node: "n1", Activity: 130,
			Heartbeat: Heartbeat{Leads: []shard.ID{0}, Follows: []shard.ID{1, 2}, MapVersion: 1}},
		"heartbeat with ready jobs": {Type: TypeHeartbeat, Node: "n1", Activity: 130,
			Heartbeat: Heartbeat{Leads: []shard.ID{0, 3}, MapVersion: 1,
				Ready: []ReadyCount{{Shard: 0, Topic: "mail", Count: 12}, {Shard: 3, Topic: "sms", Count: 1}}}},
		"enqueue": query(OpEnqueue, Args{Topic: "mail", JobID: "j0a3.5f2c", Value: "payload", Delay: 1500 * time.Millisecond,
			RunAt: time.UnixMilli(1767225600123), MaxAttempts: 5, Backoff: 2 * time.Second, Unique: "once"}),
		"acquire": query(OpAcquire, Args{Topic: "mail", Lease: 30 * time.Second, Shards: []shard.ID{1, 2}, Wait: 5 * time.Second}),
		"extend":  query(OpExtend, Args{JobID: "j0a3.5f2c", Token: 77, Grant: 1<<63 - 1, Lease: time.Minute}),
		"fail":    query(OpFail, Args{JobID: "j0a3.5f2c", Token: 77, Grant: 5, Reason: "timeout talking to smtp"}),
		"every":   query(OpEvery, Args{Topic: "cron", Unique: "cleanup", Interval: time.Hour, Value: "p", MaxAttempts: 3}),
		"dead":    query(OpDeadJobs, Args{Topic: "mail", Shards: []shard.ID{2}, Limit: 100, After: 41}),
		"retry":   retry(query(OpSet, Args{Key: "k", Value: "v"}), 1500*time.Millisecond),
		"complete and acquire": query(OpCompleteAcquire, Args{JobID: "j0a3.5f2c", Token: 77, Grant: 5, Topic: "mail",
			Lease: 30 * time.Second}),
		"enqueue batch": query(OpEnqueueBatch, Args{Batch: []BatchJob{
			{ID: "j0a3.1", Topic: "mail", Payload: "p\x00", Delay: time.Second, RunAt: time.UnixMilli(1767225600123),
				MaxAttempts: 5, Backoff: 2 * time.Second, Unique: "once"},
			{ID: "j0a3.2", Topic: "mail"},
		}}),
		"batch ids": reply(Result{Jobs: []JobInfo{{ID: "j0a3.1"}, {ID: "j0a3.2"}}}),
		"grant": reply(Result{Job: &JobInfo{ID: "j0a3.5f2c", Topic: "mail", Payload: "payload\x00", Attempt: 2,
			Token: 77, Grant: 1<<63 - 1, Deadline: time.UnixMilli(1767225630123), State: "leased", MaxAttempts: 25, LastError: "x"}}),
		"dead jobs":    reply(Result{Jobs: []JobInfo{{ID: "a", Topic: "t", State: "dead"}, {ID: "b", Topic: "t"}}, Next: 12}),
		"no dead jobs": reply(Result{Jobs: []JobInfo{}}),
		"counts":       reply(Result{Counts: &shard.JobCounts{Scheduled: 1, Ready: 2, Leased: 3, Dead: 4, Done: 5}}),
		"every result field": reply(Result{Value: "v", Version: 3,
			Topology: &Topology{Nodes: []NodeAddr{{ID: "n1", Addr: "127.0.0.1:7001"}}, Map: testMap(t)},
			Status:   &NodeStatus{ID: "n1", Activity: 2, Shards: []ShardStatus{{ID: 1, State: "Leader", Leader: "n1", Applied: 4, Keys: 5}}},
			Job:      &JobInfo{ID: "j1", Topic: "t", Payload: "p", Attempt: 1, Token: 9, State: "leased"},
			Jobs:     []JobInfo{{ID: "j2", Topic: "t", State: "dead", LastError: "e"}},
			Counts:   &shard.JobCounts{Scheduled: 1, Ready: 2, Leased: 3, Dead: 4, Done: 5}}),
		"lease lost": {Type: TypeError, TxID: 42, Node: "n2", Activity: 1,
			Err: &Error{Code: CodeLeaseLost, Message: "lease lost"}},
	}
}

func TestCodecRoundTrip(t *testing.T) {
	for name, m := range sampleMessages(t) {
		b, err := Encode(m)
		if err != nil {
			t.Errorf("%s: encode: %v", name, err)
			continue
		}
		got, err := Decode(b)
		if err != nil {
			t.Errorf("%s: decode %q: %v", name, b, err)
			continue
		}
		if !reflect.DeepEqual(&got, m) {
			t.Errorf("%s: round trip\n got %+v\nwant %+v", name, got, *m)
		}
		// Canonical: encoding the decoded message gives the same bytes.
		again, _ := Encode(&got)
		if !bytes.Equal(again, b) {
			t.Errorf("%s: re-encoding differs:\n%q\n%q", name, again, b)
		}
	}
}

// The package documentation shows these encodings; keep it true.
func TestDocumentedEncodings(t *testing.T) {
	ms := sampleMessages(t)
	for name, want := range map[string]string{
		"value":     "d1:li130e1:n2:n21:rd1:ni5e1:v5:worlde1:ti42e1:y1:re",
		"error":     "d1:eli404e9:not founde1:li130e1:n2:n21:ti42e1:y1:ee",
		"heartbeat": "d1:hd1:fli1ei2ee1:lli0ee1:mi1ee1:li130e1:n2:n11:y1:he",
		"set":       "d1:ad1:k5:hello1:v5:worlde1:c16:3f9ac2d1e0b4a7c61:ki7e1:q3:set1:si9e1:ti42e1:wi25e1:y1:qe",
	} {
		b, err := Encode(ms[name])
		if err != nil || string(b) != want {
			t.Errorf("%s: Encode = %q, %v\nwant %q", name, b, err, want)
		}
	}
}

func TestEncodeRejects(t *testing.T) {
	huge := &Message{Type: TypeQuery, TxID: 1, Op: OpSet, Args: Args{Key: "k", Value: strings.Repeat("x", MaxDatagramSize)}}
	if _, err := Encode(huge); !errors.Is(err, ErrTooLarge) {
		t.Errorf("oversized: %v, want ErrTooLarge", err)
	}
	if _, err := Encode(&Message{Type: "z"}); err == nil {
		t.Error("unknown type encoded")
	}
	if _, err := Encode(&Message{Type: TypeError, TxID: 1}); err == nil {
		t.Error("error message without Err encoded")
	}
}

func TestDecodeRejects(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     error
		txid     uint64 // a malformed query whose TxID survives, for the error reply
		mention  string // the error names the problem
	}{
		{"empty", "", ErrMalformed, 0, "EOF"},
		{"not bencode", "hello", ErrMalformed, 0, ""},
		{"list", "li1ee", ErrMalformed, 0, "want a dict"},
		{"integer", "i5e", ErrMalformed, 0, "want a dict"},
		{"leading zero", "i00e", ErrMalformed, 0, ""},
		{"huge length", "d2:op99999999999:x", ErrMalformed, 0, ""},
		{"huge length in a string", "99999999999999999999:x", ErrMalformed, 0, ""},
		{"negative length", "-1:x", ErrMalformed, 0, ""},
		{"deep nesting", strings.Repeat("l", 100) + strings.Repeat("e", 100), ErrMalformed, 0, "depth"},
		{"deep dicts", strings.Repeat("d1:a", 50) + "i1e" + strings.Repeat("e", 50), ErrMalformed, 0, "depth"},
		{"unterminated dict", "d1:y1:q", ErrMalformed, 0, ""},
		{"unsorted keys", "d1:y1:q1:ti1ee", ErrMalformed, 0, "order"},
		{"duplicate keys", "d1:ti1e1:ti2e1:y1:qe", ErrMalformed, 0, "duplicate"},
		{"trailing bytes", "d1:q3:get1:ti1e1:y1:qexyz", ErrMalformed, 0, "trailing"},
		{"float", "d1:q3:get1:ti1.5e1:y1:qe", ErrMalformed, 0, ""},
		{"no type", "d1:ti1ee", ErrMalformed, 0, "missing field y"},
		{"unknown type", "d1:ti1e1:y1:ze", ErrMalformed, 0, "unknown message type"},
		{"type not a string", "d1:ti1e1:yi1ee", ErrMalformed, 0, "field y"},
		{"query without txid", "d1:q3:get1:y1:qe", ErrMalformed, 0, "missing field t"},
		{"txid a string", "d1:q3:get1:t2:ab1:y1:qe", ErrMalformed, 0, "field t"},
		{"negative txid", "d1:q3:get1:ti-4e1:y1:qe", ErrMalformed, 0, "field t"},
		{"query without op", "d1:ti7e1:y1:qe", ErrMalformed, 7, "missing field q"},
		{"args not a dict", "d1:ai3e1:q3:get1:ti7e1:y1:qe", ErrMalformed, 7, "field a"},
		{"key not a string", "d1:ad1:ki3ee1:q3:get1:ti7e1:y1:qe", ErrMalformed, 7, "field a.k"},
		{"version a string", "d1:ad1:k1:x1:n1:5e1:q3:cas1:ti7e1:y1:qe", ErrMalformed, 7, "field a.n"},
		{"negative version", "d1:ad1:k1:x1:ni-5ee1:q3:cas1:ti7e1:y1:qe", ErrMalformed, 7, "field a.n"},
		{"seq a list", "d1:q3:get1:sle1:ti7e1:y1:qe", ErrMalformed, 7, "field s"},
		{"error not a list", "d1:ei3e1:n2:n11:ti1e1:y1:ee", ErrMalformed, 0, "field e"},
		{"error of one element", "d1:eli3ee1:n2:n11:ti1e1:y1:ee", ErrMalformed, 0, "field e"},
		{"error code a string", "d1:el1:a1:be1:n2:n11:ti1e1:y1:ee", ErrMalformed, 0, "field e"},
		{"response without node", "d1:ti1e1:y1:re", ErrMalformed, 0, "missing field n"},
		{"heartbeat shard a string", "d1:hd1:lli0e1:xee1:n2:n11:y1:he", ErrMalformed, 0, "h.l[1]"},
		{"heartbeat shard too big", "d1:hd1:lli9999999999eee1:n2:n11:y1:he", ErrMalformed, 0, "h.l[0]"},
		{"lease over a year", "d1:ad2:lsi99999999999999ee1:q3:acq1:ti7e1:y1:qe", ErrMalformed, 7, "field a.ls"},
		{"run-at past the year 3000", "d1:ad2:ati99999999999999999ee1:q3:enq1:ti7e1:y1:qe", ErrMalformed, 7, "field a.at"},
		{"ready count not a dict", "d1:hd1:rli1eee1:n2:n11:y1:he", ErrMalformed, 0, "h.r[0]"},
		{"batch not a list", "d1:ad1:bi1ee1:q4:enqb1:ti7e1:y1:qe", ErrMalformed, 7, "field a.b"},
		{"batch job not a dict", "d1:ad1:bli1eee1:q4:enqb1:ti7e1:y1:qe", ErrMalformed, 7, "a.b[0]"},
		{"batch job without id", "d1:ad1:bld2:tp1:teee1:q4:enqb1:ti7e1:y1:qe", ErrMalformed, 7, "missing field a.b[0].j"},
		{"batch job delay negative", "d1:ad1:bld2:dli-1e1:j1:a2:tp1:teee1:q4:enqb1:ti7e1:y1:qe", ErrMalformed, 7, "a.b[0].dl"},
		{"map with a gap", "d1:n2:n11:rd2:tpd1:md1:rld1:ai0e1:bi10e1:si0eee1:sld1:ii0e1:nl2:n1eee1:vi1ee1:nleee1:ti1e1:y1:re", ErrMalformed, 0, "invalid map"},
		{"oversized", strings.Repeat("x", MaxDatagramSize+1), ErrTooLarge, 0, ""},
	} {
		m, err := Decode([]byte(tc.in))
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: Decode(%.40q) error %v, want %v", tc.name, tc.in, err, tc.want)
			continue
		}
		if tc.mention != "" && !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("%s: error %q does not mention %q", tc.name, err, tc.mention)
		}
		if m.TxID != tc.txid {
			t.Errorf("%s: TxID %d, want %d", tc.name, m.TxID, tc.txid)
		}
	}
}

// Unknown keys are ignored, so that newer clients and nodes can add fields.
func TestDecodeIgnoresUnknownKeys(t *testing.T) {
	m, err := Decode([]byte("d1:ad1:k1:x5:zzzzzi1ee1:q3:get1:ti7e1:y1:q1:zli1eee"))
	if err != nil {
		t.Fatal(err)
	}
	if m.Op != OpGet || m.Args.Key != "x" || m.TxID != 7 {
		t.Errorf("decoded %+v", m)
	}
}

func BenchmarkEncode(b *testing.B) {
	m := sampleMessages(b)["set"]
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := Encode(m); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecode(b *testing.B) {
	data, err := Encode(sampleMessages(b)["set"])
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for i := 0; i < b.N; i++ {
		if _, err := Decode(data); err != nil {
			b.Fatal(err)
		}
	}
}

// Whatever a datagram holds, decoding it allocates a bounded amount: under
// 1.5 MB for the most expensive datagrams we know of (tens of thousands of
// empty containers), not in proportion to lengths the datagram claims.
func TestDecodeAllocationIsBounded(t *testing.T) {
	for name, in := range map[string]string{
		"claims a long string": "60000:",
		"claims a huge string": "d1:a99999999999:",
		"empty dicts":          "l" + strings.Repeat("de", 32000) + "e",
		"empty lists":          "l" + strings.Repeat("le", 32000) + "e",
		"integers":             "l" + strings.Repeat("i1e", 21000) + "e",
		"nested empty dicts":   strings.Repeat("l", 9) + strings.Repeat("de", 30000) + strings.Repeat("e", 9),
		"many keys":            "d" + strings.Repeat("1:ai1e", 10000) + "e",
	} {
		Decode([]byte(in)) // warm the reader pool
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, err := Decode([]byte(in))
		runtime.ReadMemStats(&after)
		if err == nil {
			t.Errorf("%s: decoded", name)
		}
		if got := after.TotalAlloc - before.TotalAlloc; got > 1536<<10 {
			t.Errorf("%s: %d bytes in, %d bytes allocated", name, len(in), got)
		}
	}
}

// Encode must write what bencode-go's Marshal writes for the same value,
// its dicts' keys in order, for every message.
func TestEncodeIsCanonical(t *testing.T) {
	for name, m := range sampleMessages(t) {
		ours, err := Encode(m)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		v, err := bencode.Decode(bytes.NewReader(ours))
		if err != nil {
			t.Fatalf("%s: bencode-go cannot decode %q: %v", name, ours, err)
		}
		var theirs bytes.Buffer
		if err := bencode.Marshal(&theirs, v); err != nil {
			t.Fatalf("%s: bencode-go: %v", name, err)
		}
		if !bytes.Equal(ours, theirs.Bytes()) {
			t.Errorf("%s:\n ours   %q\n theirs %q", name, ours, theirs.Bytes())
		}
	}
}

// A dead-job listing sized by JobInfoOverhead and ReplyOverhead encodes
// within MaxDatagramSize, also for one job of the largest payload and names
// with every integer at its widest.
func TestJobListingOverheads(t *testing.T) {
	name := strings.Repeat("n", shard.MaxKeySize)
	job := JobInfo{ID: name, Topic: name, Payload: strings.Repeat("p", shard.MaxValueSize), LastError: name,
		State: "dead", Attempt: 1<<31 - 1, MaxAttempts: 1<<31 - 1, Token: 1<<64 - 1, Grant: 1<<63 - 1, Deadline: time.UnixMilli(-1 << 62)}
	size := func(j *JobInfo) int {
		return len(j.ID) + len(j.Topic) + len(j.Payload) + len(j.LastError) + len(j.State)
	}
	node := "node-with-an-id-of-some-length"
	m := Message{Type: TypeResponse, TxID: 1<<63 - 1, Node: node, Activity: -1 << 62,
		Result: Result{Jobs: []JobInfo{job}, Next: 1<<64 - 1}}
	b, err := Encode(&m)
	if err != nil {
		t.Fatalf("a listing of one largest job: %v", err)
	}
	if bound := size(&job) + JobInfoOverhead + ReplyOverhead + len(node); len(b) > bound || bound > MaxDatagramSize {
		t.Errorf("encodes in %d bytes, bound %d, datagram %d", len(b), bound, MaxDatagramSize)
	}
	small := job
	small.Payload, small.ID, small.Topic, small.LastError = "", "i", "t", ""
	m.Result.Jobs = []JobInfo{small, small, small}
	if b, _ := Encode(&m); len(b) > 3*(size(&small)+JobInfoOverhead)+ReplyOverhead+len(node) {
		t.Errorf("three small jobs encode in %d bytes, over the bound", len(b))
	}
}

// A reply to a batch of MaxBatchJobs jobs fits a datagram, whatever the
// ids it lists; a request of MaxBatchJobs jobs sized by BatchJobSize and
// BatchOverhead fits too.
func TestBatchBounds(t *testing.T) {
	name := strings.Repeat("n", shard.MaxKeySize)
	ids := make([]JobInfo, MaxBatchJobs)
	for i := range ids {
		ids[i].ID = name
	}
	m := Message{Type: TypeResponse, TxID: 1<<63 - 1, Node: strings.Repeat("n", 64), Activity: -1 << 62, Result: Result{Jobs: ids}}
	if b, err := Encode(&m); err != nil {
		t.Errorf("a reply of %d ids of %d bytes: %v", MaxBatchJobs, len(name), err)
	} else if len(b)+SealOverhead > MaxDatagramSize {
		t.Errorf("a reply of %d bytes", len(b))
	}
	id := NewClientIdentity()
	job := BatchJob{ID: name, Topic: name, Unique: name, Payload: "p", Delay: MaxDuration, RunAt: time.UnixMilli(maxUnixMilli),
		MaxAttempts: 1<<31 - 1, Backoff: MaxDuration}
	per := BatchJobSize(&job)
	batch := make([]BatchJob, (MaxMessageSize-BatchOverhead)/per)
	for i := range batch {
		batch[i] = job
		batch[i].ID = fmt.Sprintf("%0*d", shard.MaxKeySize, i)
	}
	q := Message{Type: TypeQuery, TxID: 1<<63 - 1, Op: OpEnqueueBatch, Client: strings.Repeat("c", MaxClientIDSize),
		Proof: id.Proof, Seq: 1<<63 - 1, Ack: 1<<63 - 1, Age: MaxDuration, Timeout: MaxTimeout, Args: Args{Batch: batch}}
	if _, err := Encode(&q); err != nil {
		t.Errorf("a batch of %d jobs of %d bytes each, within BatchOverhead: %v", len(batch), per, err)
	}
}
