// Package nodelog is the raft log that all the raft groups of one node share:
// one Pebble database in which each group owns a key range, behind
// hashicorp/raft's LogStore interface.
//
// With a log per group, N groups under the same load make N smaller batches,
// each with its own fsync. Here every group's append is a synced Pebble batch,
// and Pebble's commit pipeline writes the batches that arrive together to its
// write-ahead log with one fsync (group commit), so the fsyncs per operation do
// not grow with the number of groups on a node. This is the design of
// dragonboat's LogDB and TiKV's raft-engine.
//
// A group's entries are keyed by the group id and the entry index, both
// big-endian, so a group's log is one contiguous range: deleting a group (or
// truncating it at either end) is one range deletion, and no group's keys
// interleave with another's.
package nodelog

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// ErrCorrupt is returned (wrapped) for an entry on disk that does not decode.
var ErrCorrupt = errors.New("nodelog: corrupt entry")

// ErrNotExist is returned (wrapped) by Open of a store that does not exist,
// given Config.ReadOnly.
var ErrNotExist = errors.New("nodelog: no store")

// ErrClosed is returned (wrapped) by the calls made after Close.
var ErrClosed = errors.New("nodelog: closed")

// Config configures a Store.
type Config struct {
	// Dir is the directory of the Pebble database; it is created if
	// missing.
	Dir string
	// CacheSize is the size in bytes of Pebble's block cache, which serves
	// reads of entries no longer in a group's memory (raft keeps recent
	// entries in its own cache).
	CacheSize int64
	// MemTableSize is the size in bytes of one Pebble memtable. Up to two
	// are held in memory; a full one is flushed to disk in the background.
	MemTableSize uint64
	// MinSyncInterval is the least time between two fsyncs of the log:
	// an append that asks for one sooner waits for the interval to end,
	// and the appends that arrive meanwhile, from any group, share its
	// fsync. An append after a quiet spell is synced at once. Zero syncs
	// whenever asked.
	MinSyncInterval time.Duration
	// ReadOnly opens an existing store without writing to it, to look at
	// it: every append or deletion fails.
	ReadOnly bool
	// FS is the file system the store is kept in; nil is the OS's. Tests
	// give one that loses what was not synced (vfs.NewCrashableMem).
	FS vfs.FS
	// Logger receives Pebble's log lines. Nil discards them.
	Logger *slog.Logger
}

// DefaultConfig returns the configuration of a node's log in dir: 8 MiB of
// block cache and 4 MiB memtables, which keep an idle node small.
func DefaultConfig(dir string) Config {
	return Config{Dir: dir, CacheSize: 8 << 20, MemTableSize: 4 << 20}
}

// Validate reports a configuration that cannot work.
func (c Config) Validate() error {
	switch {
	case c.Dir == "":
		return errors.New("nodelog: no directory")
	case c.CacheSize < 0:
		return fmt.Errorf("nodelog: negative cache size %d", c.CacheSize)
	case c.MemTableSize < 256<<10:
		return fmt.Errorf("nodelog: memtable size %d is under 256 KiB", c.MemTableSize)
	case c.MinSyncInterval < 0:
		return fmt.Errorf("nodelog: negative sync interval %v", c.MinSyncInterval)
	}
	return nil
}

// Store is a node's raft log: the logs of all its groups in one database.
// Its methods are safe for concurrent use.
type Store struct {
	db  *pebble.DB
	id  string
	log *slog.Logger
	// fsyncs is Pebble's histogram of its log's fsync latencies, in
	// nanoseconds; it lives as long as the database.
	fsyncs prometheus.Metric
	// appends counts the StoreLogs calls that succeeded and appendNanos
	// the time they took, their wait for a sync included.
	appends, appendNanos atomic.Uint64

	// live is held for reading by every call that uses db, and for
	// writing by Close: Pebble panics on a closed database, so Close waits
	// for the calls in progress and the calls after it fail.
	live   sync.RWMutex
	closed bool // under live

	mu     sync.Mutex
	groups map[uint64]*Log // opened groups; under mu
}

// Open opens (or creates) the store in cfg.Dir.
func Open(cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cache := pebble.NewCache(cfg.CacheSize)
	defer cache.Unref()
	opts := &pebble.Options{
		Cache:        cache,
		MemTableSize: cfg.MemTableSize,
		// A named format, not FormatNewest, so that a build with a newer
		// Pebble does not upgrade the files past what this one reads.
		FormatMajorVersion: pebble.FormatValueSeparation,
		ReadOnly:           cfg.ReadOnly,
		FS:                 cfg.FS,
		Logger:             pebbleLogger{log: cfg.Logger},
	}
	if d := cfg.MinSyncInterval; d > 0 {
		opts.WALMinSyncInterval = func() time.Duration { return d }
	}
	db, err := pebble.Open(cfg.Dir, opts)
	if errors.Is(err, pebble.ErrDBDoesNotExist) && cfg.ReadOnly {
		return nil, fmt.Errorf("%w in %s: %w", ErrNotExist, cfg.Dir, err)
	}
	if err != nil {
		return nil, fmt.Errorf("nodelog: opening %s: %w", cfg.Dir, err)
	}
	s := &Store{db: db, log: cfg.Logger, groups: make(map[uint64]*Log)}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.id, err = storeID(db, cfg.ReadOnly); err != nil {
		db.Close()
		return nil, fmt.Errorf("nodelog: %s: %w", cfg.Dir, err)
	}
	s.fsyncs, _ = db.Metrics().LogWriter.FsyncLatency.(prometheus.Metric)
	return s, nil
}

// idKey holds the store's id. It lies in the range of the reserved group
// math.MaxUint64, apart from every group's entries.
var idKey = append(key(math.MaxUint64, 0), "id"...)

// storeID reads the store's id, and makes one for a new store.
func storeID(db *pebble.DB, readOnly bool) (string, error) {
	v, closer, err := db.Get(idKey)
	switch {
	case err == nil:
		defer closer.Close()
		return string(v), nil
	case errors.Is(err, pebble.ErrNotFound) && readOnly:
		return "", nil // a store being made when it was left
	case !errors.Is(err, pebble.ErrNotFound):
		return "", fmt.Errorf("reading its id: %w", err)
	}
	id := rand.Text()
	if err := db.Set(idKey, []byte(id), pebble.Sync); err != nil {
		return "", fmt.Errorf("writing its id: %w", err)
	}
	return id, nil
}

// ID returns the store's id, made at random when it was created: a
// replica that notes it can tell its log from one in a store made since,
// after the node's log was lost or replaced.
func (s *Store) ID() string { return s.id }

// Stats is what a store's write-ahead log has done since it was opened.
type Stats struct {
	// Syncs is the fsyncs of the log, and SyncTime the time they took.
	// The appends of all groups between two syncs share the second, and
	// the log syncs once at a time, so SyncTime over the time elapsed is
	// the share of it the log spent syncing.
	Syncs    uint64
	SyncTime time.Duration
	// Appends is the appends (StoreLogs calls) of all groups, and
	// AppendTime the time they took, from the call to the sync that made
	// them durable: what a raft group waits for each time it appends.
	Appends    uint64
	AppendTime time.Duration
}

// Stats returns what the store's log has done since it was opened.
func (s *Store) Stats() (Stats, error) {
	done, err := s.use()
	if err != nil {
		return Stats{}, err
	}
	defer done()
	st := Stats{Appends: s.appends.Load(), AppendTime: time.Duration(s.appendNanos.Load())}
	if s.fsyncs != nil {
		var pm dto.Metric
		if err := s.fsyncs.Write(&pm); err == nil && pm.Histogram != nil {
			// Pebble observes the latencies in nanoseconds.
			st.Syncs = pm.Histogram.GetSampleCount()
			st.SyncTime = time.Duration(pm.Histogram.GetSampleSum())
		}
	}
	return st, nil
}

// Close closes the store. Its groups' logs fail after it.
func (s *Store) Close() error {
	s.live.Lock()
	defer s.live.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	return s.db.Close()
}

// use holds the store open for a call; done, if ok, lets it close again.
func (s *Store) use() (done func(), err error) {
	s.live.RLock()
	if s.closed {
		s.live.RUnlock()
		return nil, ErrClosed
	}
	return s.live.RUnlock, nil
}

// Group returns the log of group id, reading its bounds from disk the first
// time. The same *Log is returned for an id until DropGroup.
func (s *Store) Group(id uint64) (*Log, error) {
	if id == math.MaxUint64 {
		return nil, fmt.Errorf("nodelog: group id %d is reserved", id)
	}
	done, err := s.use()
	if err != nil {
		return nil, err
	}
	defer done()
	s.mu.Lock()
	defer s.mu.Unlock()
	if g, ok := s.groups[id]; ok {
		return g, nil
	}
	g := &Log{s: s, id: id}
	first, last, err := s.bounds(id)
	if err != nil {
		return nil, err
	}
	g.first, g.last = first, last
	s.groups[id] = g
	return g, nil
}

// bounds reads the first and last index of group id's entries on disk, both
// zero if it has none.
func (s *Store) bounds(id uint64) (first, last uint64, err error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: key(id, 0), UpperBound: key(id, math.MaxUint64)})
	if err != nil {
		return 0, 0, fmt.Errorf("nodelog: group %d: %w", id, err)
	}
	if it.First() {
		first = index(it.Key())
		if it.Last() {
			last = index(it.Key())
		}
	}
	if err := errors.Join(it.Error(), it.Close()); err != nil {
		return 0, 0, fmt.Errorf("nodelog: group %d: reading its bounds: %w", id, err)
	}
	return first, last, nil
}

// Groups returns the ids of the groups that have entries in the store, in
// increasing order.
func (s *Store) Groups() ([]uint64, error) {
	done, err := s.use()
	if err != nil {
		return nil, err
	}
	defer done()
	it, err := s.db.NewIter(&pebble.IterOptions{UpperBound: key(math.MaxUint64, 0)})
	if err != nil {
		return nil, fmt.Errorf("nodelog: %w", err)
	}
	var ids []uint64
	for ok := it.First(); ok; ok = it.SeekGE(key(ids[len(ids)-1]+1, 0)) {
		ids = append(ids, group(it.Key()))
	}
	if err := errors.Join(it.Error(), it.Close()); err != nil {
		return nil, fmt.Errorf("nodelog: listing groups: %w", err)
	}
	return ids, nil
}

// DropGroup deletes every entry of group id, durably. A *Log of the group
// returned earlier is empty after it and refuses writes; Group returns a new
// one.
func (s *Store) DropGroup(id uint64) error {
	done, err := s.use()
	if err != nil {
		return err
	}
	defer done()
	// Group waits while the range is deleted, so that a new Log of the
	// group reads its bounds after.
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.groups[id]
	delete(s.groups, id)
	if g != nil {
		g.writeMu.Lock()
		defer g.writeMu.Unlock()
		g.dropped = true
	}
	if err := s.db.DeleteRange(key(id, 0), key(id, math.MaxUint64), pebble.Sync); err != nil {
		return fmt.Errorf("nodelog: dropping group %d: %w", id, err)
	}
	if g != nil {
		g.boundsMu.Lock()
		g.first, g.last = 0, 0
		g.boundsMu.Unlock()
	}
	return nil
}

// Log is one group's log in a Store. It implements raft.LogStore. Raft
// appends from one goroutine per group and truncates the head from another;
// writes to one group are serialized here, while those of different groups
// run concurrently and share their fsyncs.
type Log struct {
	s  *Store
	id uint64

	writeMu sync.Mutex // held by a write for its commit and bounds update
	dropped bool       // by DropGroup; under writeMu
	buf     []byte     // encoding scratch; under writeMu
	key     []byte     // key scratch; under writeMu (a batch copies both)

	// first and last are the indexes of the group's first and last entry
	// on disk, both zero when it has none. They change only under writeMu
	// (and boundsMu), after the write that changes them is durable.
	// Entries between them may be missing (raft may leave a gap), never
	// entries outside them.
	boundsMu    sync.Mutex
	first, last uint64
}

var _ raft.LogStore = (*Log)(nil)

// FirstIndex returns the index of the group's first entry, 0 if it has none.
func (l *Log) FirstIndex() (uint64, error) {
	l.boundsMu.Lock()
	defer l.boundsMu.Unlock()
	return l.first, nil
}

// LastIndex returns the index of the group's last entry, 0 if it has none.
func (l *Log) LastIndex() (uint64, error) {
	l.boundsMu.Lock()
	defer l.boundsMu.Unlock()
	return l.last, nil
}

// GetLog reads the entry at index into out, or returns raft.ErrLogNotFound.
func (l *Log) GetLog(index uint64, out *raft.Log) error {
	done, err := l.s.use()
	if err != nil {
		return err
	}
	defer done()
	v, closer, err := l.s.db.Get(key(l.id, index))
	if errors.Is(err, pebble.ErrNotFound) {
		return raft.ErrLogNotFound
	}
	if err != nil {
		return fmt.Errorf("nodelog: group %d: reading entry %d: %w", l.id, index, err)
	}
	defer closer.Close()
	if err := decode(v, out); err != nil {
		return fmt.Errorf("nodelog: group %d, entry %d: %w", l.id, index, err)
	}
	out.Index = index
	return nil
}

// StoreLog appends one entry.
func (l *Log) StoreLog(e *raft.Log) error {
	return l.StoreLogs([]*raft.Log{e})
}

// StoreLogs appends entries, in increasing index order, durably: when it
// returns nil they are on disk.
func (l *Log) StoreLogs(logs []*raft.Log) error {
	if len(logs) == 0 {
		return nil
	}
	done, err := l.s.use()
	if err != nil {
		return err
	}
	defer done()
	start := time.Now()
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	if l.dropped {
		return fmt.Errorf("%w: group %d was dropped", ErrClosed, l.id)
	}
	b := l.s.db.NewBatch()
	defer b.Close()
	for _, e := range logs {
		l.buf = encode(l.buf[:0], e)
		l.key = appendKey(l.key[:0], l.id, e.Index)
		if err := b.Set(l.key, l.buf, nil); err != nil {
			return fmt.Errorf("nodelog: group %d: %w", l.id, err)
		}
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("nodelog: group %d: appending %d entries: %w", l.id, len(logs), err)
	}
	l.s.appends.Add(1)
	l.s.appendNanos.Add(uint64(time.Since(start)))
	lo, hi := logs[0].Index, logs[len(logs)-1].Index
	l.boundsMu.Lock()
	if l.first == 0 || lo < l.first {
		l.first = lo
	}
	l.last = max(l.last, hi)
	l.boundsMu.Unlock()
	return nil
}

// DeleteRange deletes the entries from min to max, both included, durably.
// Raft deletes from the head after a snapshot and from the tail when a
// follower's entries conflict with its leader's.
func (l *Log) DeleteRange(min, max uint64) error {
	if min > max {
		return nil
	}
	done, err := l.s.use()
	if err != nil {
		return err
	}
	defer done()
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	if l.dropped {
		return fmt.Errorf("%w: group %d was dropped", ErrClosed, l.id)
	}
	end := key(l.id, math.MaxUint64)
	if max < math.MaxUint64-1 {
		end = key(l.id, max+1)
	}
	if err := l.s.db.DeleteRange(key(l.id, min), end, pebble.Sync); err != nil {
		return fmt.Errorf("nodelog: group %d: deleting entries %d to %d: %w", l.id, min, max, err)
	}
	// The new bounds are read rather than worked out: raft may leave a
	// gap (a follower that installs a snapshot keeps older entries), and
	// a bound must name an entry that is there.
	first, last, err := l.s.bounds(l.id)
	if err != nil {
		return err
	}
	l.boundsMu.Lock()
	l.first, l.last = first, last
	l.boundsMu.Unlock()
	return nil
}

// key returns the key of group id's entry at index.
func key(id, index uint64) []byte { return appendKey(make([]byte, 0, 16), id, index) }

// appendKey appends the key of group id's entry at index to dst.
func appendKey(dst []byte, id, index uint64) []byte {
	return binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(dst, id), index)
}

func group(k []byte) uint64 { return binary.BigEndian.Uint64(k) }
func index(k []byte) uint64 { return binary.BigEndian.Uint64(k[8:]) }

// encodingVersion is the first byte of every encoded entry, so that a later
// format can be told apart.
const encodingVersion = 1

// encode appends e, without its index (which is in its key), to buf:
// version, term, type, append time in Unix nanoseconds (0 for none), then
// data and extensions, each after its length.
func encode(buf []byte, e *raft.Log) []byte {
	buf = append(buf, encodingVersion)
	buf = binary.AppendUvarint(buf, e.Term)
	buf = append(buf, byte(e.Type))
	var at int64
	if !e.AppendedAt.IsZero() {
		at = e.AppendedAt.UnixNano()
	}
	buf = binary.AppendVarint(buf, at)
	buf = binary.AppendUvarint(buf, uint64(len(e.Data)))
	buf = append(buf, e.Data...)
	buf = binary.AppendUvarint(buf, uint64(len(e.Extensions)))
	return append(buf, e.Extensions...)
}

// decode reads an entry that encode wrote into out, copying its data out of
// v (which Pebble owns).
func decode(v []byte, out *raft.Log) error {
	r := bytes.NewReader(v)
	ver, err := r.ReadByte()
	if err != nil || ver != encodingVersion {
		return fmt.Errorf("%w: version %d", ErrCorrupt, ver)
	}
	term, err := binary.ReadUvarint(r)
	if err != nil {
		return fmt.Errorf("%w: term: %w", ErrCorrupt, err)
	}
	typ, err := r.ReadByte()
	if err != nil {
		return fmt.Errorf("%w: type: %w", ErrCorrupt, err)
	}
	at, err := binary.ReadVarint(r)
	if err != nil {
		return fmt.Errorf("%w: time: %w", ErrCorrupt, err)
	}
	data, err := readBytes(r)
	if err != nil {
		return fmt.Errorf("%w: data: %w", ErrCorrupt, err)
	}
	ext, err := readBytes(r)
	if err != nil {
		return fmt.Errorf("%w: extensions: %w", ErrCorrupt, err)
	}
	if r.Len() != 0 {
		return fmt.Errorf("%w: %d bytes after the entry", ErrCorrupt, r.Len())
	}
	*out = raft.Log{Term: term, Type: raft.LogType(typ), Data: data, Extensions: ext}
	if at != 0 {
		out.AppendedAt = time.Unix(0, at)
	}
	return nil
}

// readBytes reads a length and that many bytes, a copy; nil for length 0.
func readBytes(r *bytes.Reader) ([]byte, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, err
	}
	if n > uint64(r.Len()) {
		return nil, fmt.Errorf("length %d, with %d bytes left", n, r.Len())
	}
	if n == 0 {
		return nil, nil
	}
	b := make([]byte, n)
	_, err = r.Read(b)
	return b, err
}

// pebbleLogger hands Pebble's log lines to a slog.Logger.
type pebbleLogger struct{ log *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any) {
	if p.log != nil {
		p.log.Debug(fmt.Sprintf(format, args...), "logger", "pebble")
	}
}

func (p pebbleLogger) Errorf(format string, args ...any) {
	if p.log != nil {
		p.log.Error(fmt.Sprintf(format, args...), "logger", "pebble")
	}
}

// Fatalf logs and panics, as Pebble expects of it. Pebble calls it on an
// invariant broken inside the database and on a failed write or sync of its
// log: the log can no longer be trusted to hold what was acknowledged, so
// the node stops (etcd does the same), and its peers carry on without it.
func (p pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if p.log != nil {
		p.log.Error(msg, "logger", "pebble")
	}
	panic(msg)
}
