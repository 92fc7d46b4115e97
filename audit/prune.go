package audit

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"

	bolt "go.etcd.io/bbolt"
)

// Pruning: the chain grows by an entry per command, so an operator who
// has exported its start may remove it. What stays is a suffix of the
// chain and its base, the seq and hash of the last entry removed: the
// first entry kept names that hash as its prev, and every checkpoint kept
// (there is always one: the chain is pruned only up to before the latest
// checkpoint) signs a head whose prev links run back to the base. Verify
// starts from the base instead of from nothing. Each step removes at most
// a bounded number of entries, so one command's transaction stays small;
// the chain verifies after every step.

// keyBase is the meta record of the base: seq(8) || hash(32).
var keyBase = []byte("base")

// KindPrune is the kind of the entry that records a prune step; its
// subject is PruneSubject of the base the step reached. Verify requires
// one for the base of a pruned chain: entries cut off its start without
// a recorded prune are missing, not pruned.
const KindPrune = "audit.prune"

// PruneSubject is the subject of the entry recording a prune step that
// moved the base to seq.
func PruneSubject(seq uint64) string { return strconv.FormatUint(seq, 10) }

// recordsPrune reports whether e is the entry of a prune step that moved
// the base to seq.
func recordsPrune(e *Entry, seq uint64) bool {
	return e.Kind == KindPrune && e.Outcome == "ok" && e.Subject == PruneSubject(seq)
}

// unrecordedBase is the detail of a chain whose base no prune entry
// names.
func unrecordedBase(seq uint64) string {
	return fmt.Sprintf("the chain starts after entry %d, but no %s entry records pruning up to it: entries were cut off the start", seq, KindPrune)
}

// ErrPruneRange: the seq to prune through is not before the latest
// checkpoint, or there is no checkpoint at all.
var ErrPruneRange = errors.New("cannot prune there")

// Base returns the base of the chain: the last entry pruned (zero when
// nothing was).
func Base(tx *bolt.Tx) (Head, error) {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		return Head{}, ErrNoLog
	}
	return baseOf(meta)
}

func baseOf(meta *bolt.Bucket) (Head, error) { return headRecord(meta, keyBase) }

// PruneResult says what one Prune step did.
type PruneResult struct {
	Removed uint64 `msgpack:"n" json:"removed"` // entries removed by this step
	Base    uint64 `msgpack:"b" json:"base"`    // the seq of the last entry removed so far
	Done    bool   `msgpack:"d" json:"done"`    // the chain now starts after through
}

// Prune removes the entries up to seq through, at most max of them (max
// > 0), oldest first, with the checkpoints of the entries removed, and
// moves the base to the last one removed. through must be before the
// latest checkpoint's seq, so a signature always covers what stays.
func Prune(tx *bolt.Tx, through uint64, max int) (PruneResult, error) {
	entries, cps, meta := tx.Bucket(bucketEntries), tx.Bucket(bucketCheckpoints), tx.Bucket(bucketMeta)
	if entries == nil || cps == nil || meta == nil {
		return PruneResult{}, ErrNoLog
	}
	base, err := baseOf(meta)
	if err != nil {
		return PruneResult{}, err
	}
	res := PruneResult{Base: base.Seq, Done: through <= base.Seq}
	if res.Done {
		return res, nil
	}
	latest, _ := cps.Cursor().Last()
	if latest == nil || len(latest) != 8 || binary.BigEndian.Uint64(latest) <= through {
		have := "none"
		if len(latest) == 8 {
			have = fmt.Sprintf("the latest is of seq %d", binary.BigEndian.Uint64(latest))
		}
		return PruneResult{}, fmt.Errorf("%w: entries are pruned only up to before the latest checkpoint (%s), so that a signature covers what stays", ErrPruneRange, have)
	}
	c := entries.Cursor()
	var last Head
	for k, v := c.First(); k != nil && res.Removed < uint64(max); k, v = c.First() {
		seq := binary.BigEndian.Uint64(k)
		if seq > through {
			break
		}
		e, err := decodeEntry(v)
		if err != nil {
			return PruneResult{}, fmt.Errorf("entry %d: %w", seq, err)
		}
		if err := c.Delete(); err != nil {
			return PruneResult{}, err
		}
		last = Head{Seq: seq, Hash: e.Hash}
		res.Removed++
	}
	if res.Removed == 0 {
		return PruneResult{}, fmt.Errorf("%w: no entry after the base %d up to %d", ErrPruneRange, base.Seq, through)
	}
	cc := cps.Cursor()
	for k, _ := cc.First(); k != nil && len(k) == 8 && binary.BigEndian.Uint64(k) <= last.Seq; k, _ = cc.First() {
		if err := cc.Delete(); err != nil {
			return PruneResult{}, err
		}
	}
	v := make([]byte, headValLen)
	binary.BigEndian.PutUint64(v, last.Seq)
	copy(v[8:], last.Hash[:])
	if err := meta.Put(keyBase, v); err != nil {
		return PruneResult{}, err
	}
	res.Base, res.Done = last.Seq, last.Seq >= through
	return res, nil
}
