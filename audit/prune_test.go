package audit_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/mcpd/mcpd/audit"
	bolt "go.etcd.io/bbolt"
)

// prune runs a prune step and, as the FSM does, records it in the chain.
func prune(t *testing.T, db *bolt.DB, through uint64, max int) (audit.PruneResult, error) {
	t.Helper()
	var res audit.PruneResult
	err := db.Update(func(tx *bolt.Tx) (err error) {
		if res, err = audit.Prune(tx, through, max); err != nil {
			return err
		}
		_, err = audit.Append(tx, audit.Event{Time: 1, Kind: audit.KindPrune, Actor: "operator:alice", Subject: audit.PruneSubject(res.Base), Outcome: "ok"})
		return err
	})
	return res, err
}

// Pruning in bounded steps: the chain verifies after every step, from
// its base, with the checkpoints kept covering it; what was removed is
// gone with its checkpoints, and appending goes on.
func Test_Prune_StepsAndVerify(t *testing.T) {
	x := newTamperFixture(t) // 50 entries, checkpoints at 20 and 40
	steps := []audit.PruneResult{{Removed: 12, Base: 12}, {Removed: 12, Base: 24}, {Removed: 6, Base: 30, Done: true}}
	for i, want := range steps {
		res, err := prune(t, x.db, 30, 12)
		if err != nil || res != want {
			t.Fatalf("step %d: %+v %v, want %+v", i, res, err, want)
		}
		r := verify(t, x.db, x.pub)
		if !r.OK || r.Pruned != want.Base || r.Entries != 50-want.Base+uint64(i+1) {
			t.Fatalf("after step %d: %s (%+v)", i, r, r)
		}
		if wantCps := 2 - min(i, 1); r.Checkpoints != wantCps {
			t.Fatalf("after step %d: %d checkpoints verified, want %d", i, r.Checkpoints, wantCps)
		}
	}
	if res, err := prune(t, x.db, 30, 12); err != nil || res != (audit.PruneResult{Base: 30, Done: true}) {
		t.Fatalf("pruning again: %+v %v", res, err)
	}
	var base audit.Head
	_ = x.db.View(func(tx *bolt.Tx) (err error) {
		base, err = audit.Base(tx)
		if _, ok, _ := audit.Get(tx, 30); ok {
			t.Error("entry 30 is still stored")
		}
		if _, ok, _ := audit.GetCheckpoint(tx, 20); ok {
			t.Error("the checkpoint of the pruned entry 20 is still stored")
		}
		return err
	})
	if base != x.heads[29] {
		t.Fatalf("base %+v, want %+v", base, x.heads[29])
	}
	more := appendN(t, x.db, 1)
	if more[0].Seq != 55 { // 50, the 3 steps' entries and the no-op's
		t.Fatalf("appended seq %d", more[0].Seq)
	}
	if r := verify(t, x.db, x.pub); !r.OK || r.Entries != 25 || !strings.Contains(r.String(), "entries up to 30 were pruned; the checkpoints cover the base") {
		t.Fatalf("after an append: %s", r)
	}
}

// Pruning stops before the latest checkpoint: what stays is always
// covered by a signature. A log without checkpoints is not pruned.
func Test_Prune_OnlyBeforeTheLatestCheckpoint(t *testing.T) {
	db := mustDB(t)
	heads := appendN(t, db, 10)
	if _, err := prune(t, db, 5, 100); !errors.Is(err, audit.ErrPruneRange) {
		t.Fatalf("without a checkpoint: %v", err)
	}
	mustCheckpoint(t, db, testKey(1), heads[5]) // seq 6
	for _, through := range []uint64{6, 7, 10} {
		if _, err := prune(t, db, through, 100); !errors.Is(err, audit.ErrPruneRange) || !strings.Contains(err.Error(), "latest is of seq 6") {
			t.Fatalf("through %d: %v", through, err)
		}
	}
	if r := verify(t, db, nil); !r.OK || r.Pruned != 0 || r.Entries != 10 {
		t.Fatalf("a refused prune changed the chain: %s", r)
	}
	if res, err := prune(t, db, 5, 100); err != nil || res != (audit.PruneResult{Removed: 5, Base: 5, Done: true}) {
		t.Fatalf("through 5: %+v %v", res, err)
	}
}

// Tampering with a pruned chain is found as in a whole one: a changed
// base, an entry put back before it, the first kept entry removed.
func Test_Prune_Tampering(t *testing.T) {
	for _, tc := range []struct {
		name   string
		tamper func(t *testing.T, x *tamperFixture)
		seq    uint64
		why    audit.Reason
	}{
		{"base_hash_changed", func(t *testing.T, x *tamperFixture) {
			var v []byte
			_ = x.db.View(func(tx *bolt.Tx) error { v = bytes.Clone(tx.Bucket(bMeta).Get([]byte("base"))); return nil })
			v[len(v)-1] ^= 1
			x.put(t, bMeta, []byte("base"), v)
		}, 31, audit.Reordered},
		{"base_record_short", func(t *testing.T, x *tamperFixture) {
			x.put(t, bMeta, []byte("base"), []byte{1, 2, 3})
		}, 1, audit.Changed},
		{"entry_before_base", func(t *testing.T, x *tamperFixture) {
			x.put(t, bEntries, k8(3), forge(audit.Entry{Seq: 3, Kind: "enqueue"}))
		}, 3, audit.Reordered},
		{"first_kept_removed", func(t *testing.T, x *tamperFixture) { x.del(t, bEntries, k8(31)) }, 31, audit.Missing},
		{"cut_without_a_prune_record", func(t *testing.T, x *tamperFixture) {
			// The start cut off with the base moved to a real entry's
			// hash: the links hold, but no prune recorded that base.
			e := x.entry(t, 32)
			x.del(t, bEntries, k8(31), k8(32))
			x.put(t, bMeta, []byte("base"), append(k8(32), e.Hash[:]...))
		}, 32, audit.Missing},
		{"base_moved_forward", func(t *testing.T, x *tamperFixture) {
			// Entries cut off the start, the base moved past them: the
			// next entry's prev is not the new base's hash.
			x.del(t, bEntries, k8(31), k8(32))
			v := append(k8(32), make([]byte, 32)...)
			x.put(t, bMeta, []byte("base"), v)
		}, 33, audit.Reordered},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := newTamperFixture(t)
			if _, err := prune(t, x.db, 30, 100); err != nil {
				t.Fatal(err)
			}
			tc.tamper(t, x)
			wantBroken(t, verify(t, x.db, x.pub), tc.seq, tc.why)
		})
	}
}

// A Chain started From the base checks a pruned log page by page as
// Verify does: the first record must follow the base and link to it, and
// the prune that reached the base must be recorded.
func Test_Prune_ChainFromBase(t *testing.T) {
	x := newTamperFixture(t)
	if _, err := prune(t, x.db, 30, 100); err != nil {
		t.Fatal(err)
	}
	check := func(base audit.Head, skip func(r *audit.Record) bool) audit.Report {
		c := audit.NewChain(x.pub)
		c.From(base)
		_ = x.db.View(func(tx *bolt.Tx) error {
			recs, err := audit.ReadRange(tx, 0, 1000)
			for i := range recs {
				if !skip(&recs[i]) {
					c.Add(&recs[i])
				}
			}
			return err
		})
		return c.Report()
	}
	base := x.heads[29]
	all := func(*audit.Record) bool { return false }
	// (The fixture's checkpoints have no entries recording them, so the
	// records carry none.)
	if r := check(base, all); !r.OK || r.Pruned != 30 || r.First != 0 || r.Entries != 21 {
		t.Fatalf("pruned log from its base: %s (%+v)", r, r)
	}
	wantBroken(t, check(x.heads[28], all), 30, audit.Missing)
	wrong := base
	wrong.Hash[0] ^= 1
	wantBroken(t, check(wrong, all), 31, audit.Reordered)
	// Without the prune's own entry (the last record), the start is
	// missing, not pruned.
	wantBroken(t, check(base, func(r *audit.Record) bool { return r.Kind == audit.KindPrune }), 30, audit.Missing)
}
