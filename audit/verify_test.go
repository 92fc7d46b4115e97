package audit_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"strings"
	"testing"

	"github.com/mcpd/mcpd/audit"
	bolt "go.etcd.io/bbolt"
)

// tamperFixture is a chain of 50 entries with checkpoints at 20 and 40 by
// the cluster key.
type tamperFixture struct {
	db    *bolt.DB
	key   ed25519.PrivateKey
	pub   ed25519.PublicKey
	heads []audit.Head
}

func newTamperFixture(t *testing.T) *tamperFixture {
	t.Helper()
	x := &tamperFixture{db: mustDB(t), key: testKey(1)}
	x.pub = x.key.Public().(ed25519.PublicKey)
	x.heads = appendN(t, x.db, 50)
	mustCheckpoint(t, x.db, x.key, x.heads[19])
	mustCheckpoint(t, x.db, x.key, x.heads[39])
	if r := verify(t, x.db, x.pub); !r.OK || r.Entries != 50 || r.Checkpoints != 2 || r.Head != x.heads[49] || !r.KeyGiven {
		t.Fatalf("intact chain: %s", r)
	}
	return x
}

func (x *tamperFixture) raw(t *testing.T, seq uint64) []byte {
	t.Helper()
	var v []byte
	_ = x.db.View(func(tx *bolt.Tx) error { v = bytes.Clone(tx.Bucket(bEntries).Get(k8(seq))); return nil })
	if v == nil {
		t.Fatalf("no entry %d", seq)
	}
	return v
}

func (x *tamperFixture) put(t *testing.T, bucket []byte, key, val []byte) {
	t.Helper()
	mustUpdate(t, x.db, func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put(key, val) })
}

func (x *tamperFixture) del(t *testing.T, bucket []byte, keys ...[]byte) {
	t.Helper()
	mustUpdate(t, x.db, func(tx *bolt.Tx) error {
		for _, k := range keys {
			if err := tx.Bucket(bucket).Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
}

// forge builds a self-consistent stored value (its hash matches) for an
// entry with the given fields.
func forge(e audit.Entry) []byte {
	e.Hash = e.ComputeHash()
	return append(e.Body(), e.Hash[:]...)
}

func (x *tamperFixture) entry(t *testing.T, seq uint64) audit.Entry {
	t.Helper()
	var e audit.Entry
	_ = x.db.View(func(tx *bolt.Tx) error {
		var ok bool
		var err error
		if e, ok, err = audit.Get(tx, seq); err != nil || !ok {
			t.Fatalf("get %d: %v %v", seq, ok, err)
		}
		return nil
	})
	return e
}

// Every single byte of an entry, changed, is found at that entry.
func Test_Verify_ChangedByte_EveryOffset(t *testing.T) {
	x := newTamperFixture(t)
	orig := x.raw(t, 7)
	for i := range orig {
		v := bytes.Clone(orig)
		v[i] ^= 0x01
		x.put(t, bEntries, k8(7), v)
		wantBroken(t, verify(t, x.db, x.pub), 7, audit.Changed)
	}
	x.put(t, bEntries, k8(7), orig)
	if r := verify(t, x.db, x.pub); !r.OK {
		t.Fatalf("restored: %s", r)
	}
}

func Test_Verify_Tampering(t *testing.T) {
	for _, tc := range []struct {
		name   string
		tamper func(t *testing.T, x *tamperFixture)
		seq    uint64
		why    audit.Reason
		noKey  bool // verify without the cluster key
	}{
		{"value_truncated", func(t *testing.T, x *tamperFixture) {
			x.put(t, bEntries, k8(33), x.raw(t, 33)[:40])
		}, 33, audit.Changed, false},
		{"value_extended", func(t *testing.T, x *tamperFixture) {
			x.put(t, bEntries, k8(33), append(x.raw(t, 33), 0))
		}, 33, audit.Changed, false},
		{"deleted_entry", func(t *testing.T, x *tamperFixture) {
			x.del(t, bEntries, k8(7))
		}, 7, audit.Missing, false},
		{"deleted_run", func(t *testing.T, x *tamperFixture) {
			x.del(t, bEntries, k8(7), k8(8), k8(9))
		}, 7, audit.Missing, false},
		{"deleted_first", func(t *testing.T, x *tamperFixture) {
			x.del(t, bEntries, k8(1))
		}, 1, audit.Missing, false},
		{"deleted_last", func(t *testing.T, x *tamperFixture) {
			x.del(t, bEntries, k8(50))
		}, 50, audit.Missing, false},
		{"cut_off_end_and_head_rewritten", func(t *testing.T, x *tamperFixture) {
			// The head record agrees, a checkpoint does not.
			var keys [][]byte
			for s := uint64(31); s <= 50; s++ {
				keys = append(keys, k8(s))
			}
			x.del(t, bEntries, keys...)
			x.put(t, bMeta, []byte("head"), append(k8(30), x.heads[29].Hash[:]...))
		}, 31, audit.Missing, false},
		{"swapped_values", func(t *testing.T, x *tamperFixture) {
			a, b := x.raw(t, 7), x.raw(t, 12)
			x.put(t, bEntries, k8(7), b)
			x.put(t, bEntries, k8(12), a)
		}, 7, audit.Reordered, false},
		{"swapped_and_renumbered", func(t *testing.T, x *tamperFixture) {
			// Seqs rewritten to fit their new keys, hashes recomputed: only
			// the prev links tell.
			a, b := x.entry(t, 7), x.entry(t, 12)
			a.Seq, b.Seq = 12, 7
			x.put(t, bEntries, k8(7), forge(b))
			x.put(t, bEntries, k8(12), forge(a))
		}, 7, audit.Reordered, false},
		{"rewritten_with_new_hash", func(t *testing.T, x *tamperFixture) {
			e := x.entry(t, 7)
			e.Outcome = "ok"
			e.Actor = "someone-else"
			x.put(t, bEntries, k8(7), forge(e))
		}, 8, audit.Reordered, false},
		{"inserted_entry", func(t *testing.T, x *tamperFixture) {
			// Entries 8.. shifted up by one to make room, each re-hashed
			// but keeping its prev.
			for s := uint64(50); s >= 8; s-- {
				e := x.entry(t, s)
				e.Seq = s + 1
				x.put(t, bEntries, k8(s+1), forge(e))
			}
			e := x.entry(t, 7)
			e.Seq, e.Prev, e.Kind = 8, e.Hash, "agent.add"
			x.put(t, bEntries, k8(8), forge(e))
		}, 9, audit.Reordered, false},
		{"chain_rewritten_consistently", func(t *testing.T, x *tamperFixture) {
			// Entry 7 changed and every later link and the head recomputed:
			// only a signed checkpoint tells.
			var prev [32]byte = x.heads[5].Hash
			for s := uint64(7); s <= 50; s++ {
				e := x.entry(t, s)
				if s == 7 {
					e.Subject = "innocent"
				}
				e.Prev = prev
				prev = e.ComputeHash()
				x.put(t, bEntries, k8(s), forge(e))
			}
			x.put(t, bMeta, []byte("head"), append(k8(50), prev[:]...))
		}, 20, audit.CheckpointMismatch, false},
		{"head_record_changed", func(t *testing.T, x *tamperFixture) {
			x.put(t, bMeta, []byte("head"), append(k8(50), x.heads[48].Hash[:]...))
		}, 50, audit.Changed, false},
		{"entry_past_head", func(t *testing.T, x *tamperFixture) {
			e := x.entry(t, 50)
			e.Seq, e.Prev = 51, e.Hash
			x.put(t, bEntries, k8(51), forge(e))
		}, 51, audit.Changed, false},
		{"checkpoint_by_another_key", func(t *testing.T, x *tamperFixture) {
			x.put(t, bCps, k8(30), cpRecord(audit.Sign(testKey(9), x.heads[29])))
		}, 30, audit.BadSignature, false},
		{"checkpoint_hash_changed", func(t *testing.T, x *tamperFixture) {
			// The right key's signature over one hash, stored with another.
			c := audit.Sign(x.key, x.heads[19])
			c.Hash = x.heads[20].Hash
			x.put(t, bCps, k8(20), cpRecord(c))
		}, 20, audit.BadSignature, false},
		{"checkpoint_signature_changed", func(t *testing.T, x *tamperFixture) {
			c := audit.Sign(x.key, x.heads[39])
			c.Sig[3] ^= 0x80
			x.put(t, bCps, k8(40), cpRecord(c))
		}, 40, audit.BadSignature, true},
		{"checkpoint_signed_over_another_hash", func(t *testing.T, x *tamperFixture) {
			// Signed by the cluster key, but not over this chain's entry.
			x.put(t, bCps, k8(25), cpRecord(audit.Sign(x.key, audit.Head{Seq: 25, Hash: sha256.Sum256([]byte("x"))})))
		}, 25, audit.CheckpointMismatch, false},
		{"checkpoint_past_the_end", func(t *testing.T, x *tamperFixture) {
			x.put(t, bCps, k8(60), cpRecord(audit.Sign(x.key, audit.Head{Seq: 60, Hash: x.heads[49].Hash})))
		}, 51, audit.Missing, false},
		{"checkpoint_record_garbled", func(t *testing.T, x *tamperFixture) {
			x.put(t, bCps, k8(20), []byte{1, 2, 3})
		}, 20, audit.BadSignature, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := newTamperFixture(t)
			tc.tamper(t, x)
			pub := x.pub
			if tc.noKey {
				pub = nil
			}
			r := verify(t, x.db, pub)
			wantBroken(t, r, tc.seq, tc.why)
			// The entries before the break were verified.
			if r.Entries != tc.seq-1 {
				t.Fatalf("%d entries verified before the break at %d, want %d", r.Entries, tc.seq, tc.seq-1)
			}
		})
	}
}

// Without checkpoints, a consistently rewritten chain cannot be told from
// the real one: that is what the signed checkpoints are for.
func Test_Verify_RewriteWithoutCheckpoint_Undetectable(t *testing.T) {
	db := mustDB(t)
	appendN(t, db, 10)
	var prev [32]byte
	mustUpdate(t, db, func(tx *bolt.Tx) error {
		for s := uint64(1); s <= 10; s++ {
			e, _, _ := audit.Get(tx, s)
			e.Actor, e.Prev = "rewritten", prev
			prev = e.ComputeHash()
			if err := tx.Bucket(bEntries).Put(k8(s), forge(e)); err != nil {
				return err
			}
		}
		return tx.Bucket(bMeta).Put([]byte("head"), append(k8(10), prev[:]...))
	})
	if r := verify(t, db, nil); !r.OK || r.Head.Hash != prev {
		t.Fatalf("report %s", r)
	}
}

func Test_Verify_EmptyAndMissingLog(t *testing.T) {
	if r := verify(t, mustDB(t), nil); !r.OK || r.Entries != 0 || !strings.HasPrefix(r.String(), "ok: 0 entries") {
		t.Fatalf("empty chain: %s", r)
	}
	db, err := bolt.Open(t.TempDir()+"/other.db", 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error { _, err := audit.Verify(tx, nil); return err })
	if err != audit.ErrNoLog {
		t.Fatalf("database without the buckets: %v", err)
	}
}

// cpRecord is the stored form of a checkpoint, as docs/security.md gives it.
func cpRecord(c audit.Checkpoint) []byte {
	b := []byte{1}
	b = append(b, c.Hash[:]...)
	b = append(b, c.Public...)
	return append(b, c.Sig...)
}
