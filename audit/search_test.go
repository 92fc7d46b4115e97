package audit_test

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/mcpd/mcpd/audit"
	bolt "go.etcd.io/bbolt"
)

// scanChain appends 40 entries whose times repeat in threes, as commands
// applied in the same millisecond do: seq s has time scanT0 + 10*((s-1)/3).
func scanChain(t *testing.T) *bolt.DB {
	t.Helper()
	db := mustDB(t)
	mustUpdate(t, db, func(tx *bolt.Tx) error {
		for i := range 40 {
			ev := event(i)
			ev.Time = scanTime(uint64(i + 1))
			if _, err := audit.Append(tx, ev); err != nil {
				return err
			}
		}
		return nil
	})
	return db
}

const scanT0 = 1_700_000_000_000

func scanTime(seq uint64) int64 { return scanT0 + 10*int64((seq-1)/3) }

// scan runs audit.Scan, keeping up to keep entries (0: all).
func scan(t *testing.T, db *bolt.DB, o audit.ScanOptions, keep int) ([]uint64, audit.ScanResult) {
	t.Helper()
	var (
		seqs []uint64
		res  audit.ScanResult
	)
	err := db.View(func(tx *bolt.Tx) (err error) {
		res, err = audit.Scan(tx, o, func(r *audit.Record) bool {
			seqs = append(seqs, r.Seq)
			return keep == 0 || len(seqs) < keep
		})
		return err
	})
	if err != nil {
		t.Fatalf("scan %+v: %v", o, err)
	}
	return seqs, res
}

// want is the seqs a scan in bounds reads, by brute force over the chain.
func want(o audit.ScanOptions) []uint64 {
	var out []uint64
	for s := uint64(1); s <= 40; s++ {
		ts := scanTime(s)
		if (o.Since != 0 && ts < o.Since) || (o.Until != 0 && ts >= o.Until) {
			continue
		}
		if o.After != 0 && ((!o.Desc && s <= o.After) || (o.Desc && s >= o.After)) {
			continue
		}
		out = append(out, s)
	}
	if o.Desc {
		slices.Reverse(out)
	}
	return out
}

// Scan reads from the cursor in either direction, seeks to the time
// bounds and stops past them, whatever the times' repeats.
func Test_Scan_CursorDirectionAndTimeBounds(t *testing.T) {
	db := scanChain(t)
	var cases []audit.ScanOptions
	for _, desc := range []bool{false, true} {
		for _, after := range []uint64{0, 1, 2, 17, 39, 40, 41, 1 << 63} {
			for _, since := range []int64{0, scanT0 - 5, scanT0, scanT0 + 10, scanT0 + 15, scanT0 + 130, scanT0 + 1000} {
				for _, until := range []int64{0, scanT0, scanT0 + 1, scanT0 + 60, scanT0 + 65, scanT0 + 130, scanT0 + 131, scanT0 + 1000} {
					cases = append(cases, audit.ScanOptions{After: after, Desc: desc, Since: since, Until: until})
				}
			}
		}
	}
	for _, o := range cases {
		got, res := scan(t, db, o, 0)
		w := want(o)
		if !slices.Equal(got, w) {
			t.Fatalf("%+v: read %v, want %v", o, got, w)
		}
		if res.More || (len(w) > 0 && res.Last != w[len(w)-1]) {
			t.Fatalf("%+v: %+v after reading %v", o, res, got)
		}
		// Bisection skips what is out of bounds before the first entry
		// in them: the scan reads those entries, and at most the
		// repeats of one time beside them.
		if res.Scanned > len(w)+3 {
			t.Fatalf("%+v: scanned %d to find %d", o, res.Scanned, len(w))
		}
	}
}

// Max and fn bound a scan; More and Last say where the next one starts,
// and following them reads every entry once.
func Test_Scan_Pages(t *testing.T) {
	db := scanChain(t)
	for _, o := range []audit.ScanOptions{
		{Max: 7}, {Desc: true, Max: 7}, {Max: 5, Since: scanT0 + 25}, {Desc: true, Max: 4, Until: scanT0 + 95, Since: scanT0 + 20},
	} {
		for _, keep := range []int{0, 3} {
			var all []uint64
			cur := o
			for range 100 {
				got, res := scan(t, db, cur, keep)
				if res.Scanned > o.Max {
					t.Fatalf("%+v: scanned %d", cur, res.Scanned)
				}
				all = append(all, got...)
				if !res.More {
					break
				}
				cur.After = res.Last
			}
			if w := want(o); !slices.Equal(all, w) {
				t.Fatalf("%+v keeping %d a page: read %v, want %v", o, keep, all, w)
			}
		}
	}
	// Stopped on the last entry in bounds: nothing more to read.
	if _, res := scan(t, db, audit.ScanOptions{Until: scanT0 + 10}, 3); res.More || res.Last != 3 {
		t.Fatalf("stopped at the bound: %+v", res)
	}
	if _, res := scan(t, db, audit.ScanOptions{Desc: true, After: 4}, 3); res.More || res.Last != 1 {
		t.Fatalf("stopped at the first entry: %+v", res)
	}
	if _, res := scan(t, db, audit.ScanOptions{Desc: true}, 3); !res.More || res.Last != 38 {
		t.Fatalf("stopped by fn: %+v", res)
	}
}

// A checkpoint entry comes with its checkpoint, as ReadRange gives it; an
// empty chain scans to nothing, a database without one is ErrNoLog.
func Test_Scan_CheckpointsAndEmpty(t *testing.T) {
	db := mustDB(t)
	heads := appendN(t, db, 5)
	mustCheckpoint(t, db, testKey(1), heads[4])
	mustUpdate(t, db, func(tx *bolt.Tx) error {
		_, err := audit.Append(tx, audit.Event{Kind: audit.KindCheckpoint, Subject: audit.CheckpointSubject(5), Outcome: "ok"})
		return err
	})
	_ = db.View(func(tx *bolt.Tx) error {
		var got *audit.Record
		_, err := audit.Scan(tx, audit.ScanOptions{Desc: true}, func(r *audit.Record) bool {
			got = r
			return false
		})
		if err != nil || got == nil || got.Seq != 6 || got.Checkpoint == nil || got.Checkpoint.Seq != 5 {
			t.Fatalf("newest entry: %+v, %v", got, err)
		}
		return nil
	})
	empty := mustDB(t)
	for _, desc := range []bool{false, true} {
		if got, res := scan(t, empty, audit.ScanOptions{Desc: desc}, 0); len(got) != 0 || res != (audit.ScanResult{}) {
			t.Fatalf("empty chain, desc %v: %v %+v", desc, got, res)
		}
	}
	_ = empty.Update(func(tx *bolt.Tx) error {
		for _, b := range audit.Buckets {
			if err := tx.DeleteBucket(b); err != nil {
				return fmt.Errorf("delete %s: %w", b, err)
			}
		}
		if _, err := audit.Scan(tx, audit.ScanOptions{}, func(*audit.Record) bool { return true }); !errors.Is(err, audit.ErrNoLog) {
			t.Fatalf("no log: %v", err)
		}
		return nil
	})
}
