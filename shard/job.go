package shard

import (
	"fmt"
	"strconv"
	"time"
)

// MinScheduleInterval is the shortest interval of a schedule: a schedule
// makes at most one job a second, which the shard keeps until it is done.
const MinScheduleInterval = time.Second

// JobSlot returns the slot a job id routes to: ids made by NewJobID carry
// it; any other id hashes like a key.
func JobSlot(id string) int {
	if len(id) > 5 && id[0] == 'j' && id[4] == '.' {
		if s, err := strconv.ParseUint(id[1:4], 16, 16); err == nil && s < SlotCount {
			return int(s)
		}
	}
	return KeySlot(id)
}

// NewJobID returns a job id that routes to slot: "j" and the slot in three
// hex digits, a dot, and suffix.
func NewJobID(slot int, suffix string) string {
	return fmt.Sprintf("j%03x.%s", slot, suffix)
}

// JobKey names a topic's uniqueness key or schedule key in the keyspace:
// the topic, a NUL, and the key. Topics may not contain NUL (CheckTopic),
// so no two pairs share a name.
func JobKey(topic, key string) string { return topic + "\x00" + key }

// JobKeySlot is the slot of the jobs enqueued with a uniqueness key, and of
// an interval schedule: all of them live where JobKey(topic, key) does.
func JobKeySlot(topic, key string) int { return KeySlot(JobKey(topic, key)) }

// JobCounts counts a topic's jobs on a shard by state, as of a point in
// its log. Scheduled and Ready are told apart by the clock of the node
// that counts (the leader, or a follower answering a read), not by the
// state machine's.
type JobCounts struct {
	Scheduled, Ready, Leased, Dead int
	// Done counts completions since the topic last held no job on the
	// shard: a shard forgets a topic left without jobs.
	Done uint64
}
