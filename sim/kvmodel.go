package sim

import (
	"fmt"
	"sort"

	"github.com/anishathalye/porcupine"
)

// kvInput is one operation on one key, as a history records it.
type kvInput struct {
	Op      string // "get", "set", "cas", "del"
	Key     string
	Value   string
	Version uint64 // cas: the expected version
}

// kvOutput is what the operation returned. Unknown: no definite answer (a
// write that may or may not have taken effect, now or later). A delete
// reports no version.
type kvOutput struct {
	Unknown  bool
	OK       bool   // get found / write applied
	Value    string // get
	Version  uint64 // the key's version: read, written, deleted, or current on conflict
	Conflict bool   // cas found another version
}

// kvState is one key as the model knows it. A write whose outcome is unknown
// leaves the version unknown (0) but above minVer, until a read reveals it.
type kvState struct {
	Exists  bool
	Value   string
	Version uint64
	MinVer  uint64
}

// lower is the smallest version the key may have now.
func (s kvState) lower() uint64 { return max(s.Version, s.MinVer) }

// versionIs reports whether the key's version can be v.
func (s kvState) versionIs(v uint64) bool {
	if s.Version != 0 {
		return s.Version == v
	}
	return v >= s.MinVer
}

// kvModel is shoal's key-value contract, per key: linearizable reads and
// writes, versions that grow with every write, compare-and-set on the
// version. It is nondeterministic only in writes whose outcome is unknown.
var kvModel = porcupine.NondeterministicModel{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		for _, op := range h {
			k := op.Input.(kvInput).Key
			byKey[k] = append(byKey[k], op)
		}
		keys := make([]string, 0, len(byKey))
		for k := range byKey {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		out := make([][]porcupine.Operation, len(keys))
		for i, k := range keys {
			out[i] = byKey[k]
		}
		return out
	},
	Init: func() []interface{} { return []interface{}{kvState{}} },
	Step: func(st, in, out interface{}) []interface{} {
		s, i, o := st.(kvState), in.(kvInput), out.(kvOutput)
		applied := func(version uint64) kvState {
			return kvState{Exists: true, Value: i.Value, Version: version, MinVer: version}
		}
		switch i.Op {
		case "get":
			switch {
			case !o.OK && !s.Exists:
				return []interface{}{s}
			case o.OK && s.Exists && s.Value == o.Value && s.versionIs(o.Version):
				return []interface{}{kvState{Exists: true, Value: s.Value, Version: o.Version, MinVer: o.Version}}
			}
			return nil
		case "set":
			switch {
			case o.Unknown:
				return []interface{}{s, kvState{Exists: true, Value: i.Value, MinVer: s.lower() + 1}}
			case o.Version > s.lower() || (o.Version == s.lower() && s.Version == 0):
				return []interface{}{applied(o.Version)}
			}
			return nil
		case "del":
			gone := kvState{MinVer: s.lower() + 1}
			switch {
			case o.Unknown && s.Exists:
				return []interface{}{s, gone}
			case o.Unknown:
				return []interface{}{s}
			case o.OK && s.Exists:
				return []interface{}{gone}
			case !o.OK && !s.Exists:
				return []interface{}{s}
			}
			return nil
		case "cas":
			holds := (i.Version == 0 && !s.Exists) || (i.Version != 0 && s.Exists && s.versionIs(i.Version))
			switch {
			case o.Unknown && holds:
				return []interface{}{s, kvState{Exists: true, Value: i.Value, MinVer: s.lower() + 1}}
			case o.Unknown:
				return []interface{}{s}
			case o.OK && holds && o.Version > max(s.lower(), i.Version):
				return []interface{}{applied(o.Version)}
			case o.Conflict && o.Version == 0 && !s.Exists && i.Version != 0:
				return []interface{}{s}
			case o.Conflict && o.Version != 0 && s.Exists && o.Version != i.Version && s.versionIs(o.Version):
				return []interface{}{kvState{Exists: true, Value: s.Value, Version: o.Version, MinVer: o.Version}}
			}
			return nil
		}
		return nil
	},
	DescribeOperation: func(in, out interface{}) string {
		i, o := in.(kvInput), out.(kvOutput)
		res := fmt.Sprintf("ok v%d", o.Version)
		switch {
		case o.Unknown:
			res = "?"
		case o.Conflict:
			res = fmt.Sprintf("conflict v%d", o.Version)
		case !o.OK:
			res = "absent"
		case i.Op == "get":
			res = fmt.Sprintf("%q v%d", o.Value, o.Version)
		}
		switch i.Op {
		case "get", "del":
			return fmt.Sprintf("%s(%s) → %s", i.Op, i.Key, res)
		case "cas":
			return fmt.Sprintf("cas(%s, v%d, %q) → %s", i.Key, i.Version, i.Value, res)
		}
		return fmt.Sprintf("set(%s, %q) → %s", i.Key, i.Value, res)
	},
	DescribeState: func(st interface{}) string {
		s := st.(kvState)
		if !s.Exists {
			return "absent"
		}
		if s.Version == 0 {
			return fmt.Sprintf("%q v>=%d", s.Value, s.MinVer)
		}
		return fmt.Sprintf("%q v%d", s.Value, s.Version)
	},
}
