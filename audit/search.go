package audit

import (
	"encoding/binary"
	"fmt"
	"math"

	bolt "go.etcd.io/bbolt"
)

// ScanOptions say where Scan starts and where it stops.
type ScanOptions struct {
	// After is the cursor: the scan starts past it in its own order, at
	// seq After+1 going up or, with Desc, at seq After-1 going down. 0
	// starts at the first entry, or with Desc at the last.
	After uint64
	// Desc walks the chain from the newest entry to the oldest.
	Desc bool
	// Since and Until bound the entries' times to [Since, Until), unix
	// milliseconds; 0 leaves that side open. Entry times never go back
	// (the FSM stamps each command with at least the time of the one
	// before it), so the scan seeks to the first entry in bounds and
	// ends at the first one past them instead of reading them all.
	Since, Until int64
	// Max bounds how many entries the scan reads; 0 does not.
	Max int
}

// ScanResult says how far a Scan went.
type ScanResult struct {
	Scanned int    // entries read
	Last    uint64 // the seq of the last entry read; 0 when none was
	// More: entries in bounds may follow Last in the scan's order (the
	// scan stopped at Max or where fn asked); a new scan with After =
	// Last goes on from there.
	More bool
}

// Scan hands the entries of the chain to fn in seq order, or newest
// first with o.Desc, from o's cursor and within its time bounds, each as
// ReadRange returns it, until fn returns false or o.Max entries were
// read. It does not check hashes. An entry that does not parse ends the
// scan with an error.
func Scan(tx *bolt.Tx, o ScanOptions, fn func(r *Record) bool) (ScanResult, error) {
	var res ScanResult
	entries, cps := tx.Bucket(bucketEntries), tx.Bucket(bucketCheckpoints)
	if entries == nil || cps == nil {
		return res, ErrNoLog
	}
	c := entries.Cursor()
	firstK, _ := c.First()
	lastK, _ := c.Last()
	if firstK == nil {
		return res, nil
	}
	first, last := binary.BigEndian.Uint64(firstK), binary.BigEndian.Uint64(lastK)

	// The first seq to read, and the step from one to the next.
	var (
		start uint64
		step  = c.Next
	)
	if !o.Desc {
		if o.After >= last {
			return res, nil
		}
		start = max(o.After+1, first)
		if o.Since != 0 {
			start = firstAtOrAfter(entries, start, last, o.Since)
		}
	} else {
		step = c.Prev
		start = last
		if o.After != 0 {
			if o.After <= first {
				return res, nil
			}
			start = min(o.After-1, last)
		}
		if o.Until != 0 {
			// The first entry at or after until, if any up to start, and
			// every one after it are out of bounds.
			if s := firstAtOrAfter(entries, first, start, o.Until); s <= start {
				if s == first {
					return res, nil
				}
				start = s - 1
			}
		}
	}
	// inBounds is whether an entry of that time may be read; past ends
	// the scan (times only grow along the chain).
	inBounds := func(ts int64) (ok, past bool) {
		if o.Desc {
			if o.Since != 0 && ts < o.Since {
				return false, true
			}
			return o.Until == 0 || ts < o.Until, false
		}
		if o.Until != 0 && ts >= o.Until {
			return false, true
		}
		return o.Since == 0 || ts >= o.Since, false
	}

	k, v := c.Seek(seqKey(start))
	if o.Desc && (k == nil || binary.BigEndian.Uint64(k) > start) {
		k, v = c.Prev()
	}
	for ; k != nil; k, v = step() {
		if o.Max > 0 && res.Scanned >= o.Max {
			res.More = mayRead(v, inBounds)
			return res, nil
		}
		e, err := decodeEntry(v)
		if err != nil {
			return res, fmt.Errorf("entry under key %x: %w", k, err)
		}
		ok, past := inBounds(e.Time)
		if past {
			return res, nil
		}
		res.Scanned++
		res.Last = e.Seq
		if !ok {
			continue
		}
		r := record(cps, e)
		if !fn(&r) {
			k, v = step()
			res.More = k != nil && mayRead(v, inBounds)
			return res, nil
		}
	}
	return res, nil
}

// mayRead is whether the scan may read the stored entry v: one whose
// time it cannot tell is read (and then reported if it does not parse).
func mayRead(v []byte, inBounds func(int64) (bool, bool)) bool {
	if len(v) < 17 {
		return true
	}
	_, past := inBounds(entryTime(v))
	return !past
}

// entryTime is the time of a stored entry of at least 17 bytes.
func entryTime(v []byte) int64 { return int64(binary.BigEndian.Uint64(v[9:17])) }

// firstAtOrAfter returns the least seq in [lo, hi] whose entry's time is
// at least ts, or hi+1 when there is none, by bisection (entry times
// never go back). A seq missing from the chain or an entry too short to
// hold a time gives up the search and returns lo, so the scan reads from
// there.
func firstAtOrAfter(entries *bolt.Bucket, lo, hi uint64, ts int64) uint64 {
	if hi == math.MaxUint64 {
		hi-- // seqs never get there; keeps hi+1 from wrapping
	}
	from, end := lo, hi+1
	for lo < end {
		mid := lo + (end-lo)/2
		v := entries.Get(seqKey(mid))
		if len(v) < 17 {
			return from
		}
		if entryTime(v) < ts {
			lo = mid + 1
		} else {
			end = mid
		}
	}
	return lo
}
