package audit_test

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/mcpd/mcpd/audit"
	bolt "go.etcd.io/bbolt"
)

// The on-disk layout, as docs/security.md documents it.
var (
	bEntries = []byte("audit")
	bCps     = []byte("auditcp")
	bMeta    = []byte("auditmeta")
)

func mustDB(t testing.TB) *bolt.DB {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	mustUpdate(t, db, audit.CreateBuckets)
	return db
}

func mustUpdate(t testing.TB, db *bolt.DB, fn func(tx *bolt.Tx) error) {
	t.Helper()
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
}

// testKey is a fixed cluster audit key.
func testKey(seed byte) ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize))
}

func event(i int) audit.Event {
	kinds := []string{"enqueue", "consume", "ack", "agent.revoke", "auth.fail"}
	outcomes := []string{"ok", "ok", "not_found", "ok", "unauthorized"}
	return audit.Event{
		Time:    1_700_000_000_000 + int64(i)*7,
		Kind:    kinds[i%len(kinds)],
		Actor:   fmt.Sprintf("agent%d", i%3),
		Subject: fmt.Sprintf("q%d", i%4),
		Outcome: outcomes[i%len(outcomes)],
		Details: []byte(fmt.Sprintf("body %d", i)),
	}
}

// appendN appends n events and returns the head after each (index seq-1).
func appendN(t testing.TB, db *bolt.DB, n int) []audit.Head {
	t.Helper()
	var heads []audit.Head
	mustUpdate(t, db, func(tx *bolt.Tx) error {
		for i := range n {
			h, err := audit.Append(tx, event(i))
			if err != nil {
				return err
			}
			heads = append(heads, h)
		}
		return nil
	})
	return heads
}

func mustCheckpoint(t testing.TB, db *bolt.DB, key ed25519.PrivateKey, h audit.Head) {
	t.Helper()
	mustUpdate(t, db, func(tx *bolt.Tx) error { return audit.AddCheckpoint(tx, audit.Sign(key, h)) })
}

func verify(t testing.TB, db *bolt.DB, pub ed25519.PublicKey) audit.Report {
	t.Helper()
	var r audit.Report
	err := db.View(func(tx *bolt.Tx) error {
		var err error
		r, err = audit.Verify(tx, pub)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func wantBroken(t *testing.T, r audit.Report, seq uint64, why audit.Reason) {
	t.Helper()
	if r.OK || r.BrokenSeq != seq || r.Reason != why {
		t.Fatalf("report %q, want broken at seq %d: %s", r, seq, why)
	}
	if !strings.HasPrefix(r.String(), fmt.Sprintf("broken at seq %d: %s: ", seq, why)) {
		t.Fatalf("verdict %q", r)
	}
}

func k8(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

// --------------------------------------------------------------- the chain

func Test_Audit_Append_LinksAndHashes(t *testing.T) {
	db := mustDB(t)
	heads := appendN(t, db, 20)
	_ = db.View(func(tx *bolt.Tx) error {
		var prev [32]byte
		for i, h := range heads {
			e, ok, err := audit.Get(tx, uint64(i+1))
			if err != nil || !ok {
				t.Fatalf("get %d: %v %v", i+1, ok, err)
			}
			ev := event(i)
			if e.Seq != uint64(i+1) || e.Time != ev.Time || e.Kind != ev.Kind || e.Actor != ev.Actor ||
				e.Subject != ev.Subject || e.Outcome != ev.Outcome || e.Digest != sha256.Sum256(ev.Details) {
				t.Fatalf("entry %d = %+v, from event %+v", i+1, e, ev)
			}
			if e.Prev != prev {
				t.Fatalf("entry %d prev %x, want %x", e.Seq, e.Prev, prev)
			}
			if e.Hash != h.Hash || e.ComputeHash() != e.Hash || sha256.Sum256(e.Body()) != e.Hash {
				t.Fatalf("entry %d hash %x, head %x, computed %x", e.Seq, e.Hash, h.Hash, e.ComputeHash())
			}
			// The stored value is the body and its hash.
			v := tx.Bucket(bEntries).Get(k8(e.Seq))
			if !bytes.Equal(v, append(e.Body(), e.Hash[:]...)) {
				t.Fatalf("entry %d stored as %x", e.Seq, v)
			}
			prev = e.Hash
		}
		head, err := audit.ReadHead(tx)
		if err != nil || head != heads[len(heads)-1] {
			t.Fatalf("head %+v (%v), want %+v", head, err, heads[len(heads)-1])
		}
		return nil
	})
	// Same events, another database: the same chain.
	if other := appendN(t, mustDB(t), 20); other[19] != heads[19] {
		t.Fatalf("same events, heads %x and %x", other[19].Hash, heads[19].Hash)
	}
}

// A fixed entry and its hash, also given in docs/security.md as a test
// vector for verifiers written in other languages.
func Test_Audit_Entry_TestVector(t *testing.T) {
	db := mustDB(t)
	var h audit.Head
	mustUpdate(t, db, func(tx *bolt.Tx) error {
		var err error
		h, err = audit.Append(tx, audit.Event{Time: 1700000000000, Kind: "enqueue", Actor: "alice", Subject: "jobs", Outcome: "ok", Details: []byte("hello")})
		return err
	})
	var e audit.Entry
	_ = db.View(func(tx *bolt.Tx) error { e, _, _ = audit.Get(tx, 1); return nil })
	const (
		wantBody = "01" + "0000000000000001" + "0000018bcfe56800" +
			"0007656e7175657565" + "0005616c696365" + "00046a6f6273" + "00026f6b" +
			"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824" +
			"0000000000000000000000000000000000000000000000000000000000000000"
		wantHash = "7a1ae71a56dc4305aa98cf0e5b532e407b87af03f68f50452739957316316be1"
	)
	if got := hex.EncodeToString(e.Body()); got != wantBody {
		t.Fatalf("body\n%s\nwant\n%s", got, wantBody)
	}
	if got := hex.EncodeToString(h.Hash[:]); got != wantHash {
		t.Fatalf("hash %s, want %s", got, wantHash)
	}
	msg := audit.CheckpointMessage(1, h.Hash)
	if string(msg) != "mcpd-audit-checkpoint-v1\n1\n"+wantHash {
		t.Fatalf("checkpoint message %q", msg)
	}
}

func Test_Audit_Fields_CleanedAndExportedExactly(t *testing.T) {
	db := mustDB(t)
	long := strings.Repeat("é", audit.MaxField) // 2 bytes a rune: cut at a rune boundary
	odd := []string{"<a&b>\"\\\n\t\x00", "bad \xff\xfe utf-8", long, "日本" + long, ""}
	mustUpdate(t, db, func(tx *bolt.Tx) error {
		for _, s := range odd {
			if _, err := audit.Append(tx, audit.Event{Kind: s, Actor: s, Subject: s, Outcome: s}); err != nil {
				return err
			}
		}
		return nil
	})
	var out bytes.Buffer
	_ = db.View(func(tx *bolt.Tx) error {
		n, err := audit.Export(tx, 0, &out)
		if err != nil || n != uint64(len(odd)) {
			t.Fatalf("export: %d, %v", n, err)
		}
		return nil
	})
	// A verifier that has only the export rebuilds every hash from it.
	sc := bufio.NewScanner(&out)
	sc.Buffer(nil, 1<<20)
	var prev [32]byte
	for i := 0; sc.Scan(); i++ {
		var r audit.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		if !utf8.ValidString(r.Subject) || len(r.Subject) > audit.MaxField {
			t.Fatalf("entry %d subject of %d bytes, valid UTF-8 %v", r.Seq, len(r.Subject), utf8.ValidString(r.Subject))
		}
		if r.ComputeHash() != r.Hash || r.Prev != prev {
			t.Fatalf("entry %d from the export: hash %x, computed %x", r.Seq, r.Hash, r.ComputeHash())
		}
		prev = r.Hash
	}
	if r := verify(t, db, nil); !r.OK || r.Entries != uint64(len(odd)) {
		t.Fatalf("report %s", r)
	}
}

// ------------------------------------------------------------- checkpoints

func Test_Audit_AddCheckpoint_Checks(t *testing.T) {
	db := mustDB(t)
	key, other := testKey(1), testKey(2)
	heads := appendN(t, db, 10)
	add := func(c audit.Checkpoint) error {
		return db.Update(func(tx *bolt.Tx) error { return audit.AddCheckpoint(tx, c) })
	}
	forged := audit.Sign(key, heads[4])
	forged.Hash = heads[5].Hash
	for _, tc := range []struct {
		name string
		cp   audit.Checkpoint
		want error
	}{
		{"signature_over_another_hash", forged, audit.ErrBadCheckpoint},
		{"entry_has_another_hash", audit.Sign(key, audit.Head{Seq: 5, Hash: heads[5].Hash}), audit.ErrBadCheckpoint},
		{"no_such_entry", audit.Sign(key, audit.Head{Seq: 11, Hash: heads[9].Hash}), audit.ErrBadCheckpoint},
		{"truncated_signature", func() audit.Checkpoint { c := audit.Sign(key, heads[4]); c.Sig = c.Sig[:10]; return c }(), audit.ErrBadCheckpoint},
	} {
		if err := add(tc.cp); !errors.Is(err, tc.want) {
			t.Fatalf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	_ = db.View(func(tx *bolt.Tx) error {
		if _, ok, _ := audit.LatestCheckpoint(tx); ok {
			t.Fatal("a refused checkpoint was stored")
		}
		return nil
	})
	// Any key's valid signature is kept; Verify decides whom to trust.
	if err := add(audit.Sign(other, heads[4])); err != nil {
		t.Fatal(err)
	}
	if err := add(audit.Sign(key, heads[4])); !errors.Is(err, audit.ErrStaleCheckpoint) {
		t.Fatalf("same seq again: %v", err)
	}
	if err := add(audit.Sign(key, heads[2])); !errors.Is(err, audit.ErrStaleCheckpoint) {
		t.Fatalf("earlier seq: %v", err)
	}
	want := audit.Sign(key, heads[9])
	if err := add(want); err != nil {
		t.Fatal(err)
	}
	_ = db.View(func(tx *bolt.Tx) error {
		got, ok, err := audit.LatestCheckpoint(tx)
		if err != nil || !ok || got.Seq != 10 || got.Hash != want.Hash || !bytes.Equal(got.Sig, want.Sig) || !got.Public.Equal(want.Public) {
			t.Fatalf("latest checkpoint %+v %v %v", got, ok, err)
		}
		return nil
	})
	if r := verify(t, db, key.Public().(ed25519.PublicKey)); !r.OK {
		// The checkpoint at 5 is by another key.
		wantBroken(t, r, 5, audit.BadSignature)
	} else {
		t.Fatalf("report %s: a checkpoint by another key passed", r)
	}
	if r := verify(t, db, nil); !r.OK || r.Checkpoints != 2 || r.KeyGiven {
		t.Fatalf("without a key: %s", r)
	}
}

func Test_Audit_CheckpointDue(t *testing.T) {
	db := mustDB(t)
	key := testKey(1)
	due := func() (audit.Head, bool) {
		var h audit.Head
		var ok bool
		_ = db.View(func(tx *bolt.Tx) error {
			var err error
			h, ok, err = audit.CheckpointDue(tx)
			if err != nil {
				t.Fatal(err)
			}
			return nil
		})
		return h, ok
	}
	if _, ok := due(); ok {
		t.Fatal("an empty chain is due")
	}
	heads := appendN(t, db, 3)
	h, ok := due()
	if !ok || h != heads[2] {
		t.Fatalf("due %v %+v, want the head %+v", ok, h, heads[2])
	}
	// The checkpoint's own entry is not news.
	mustUpdate(t, db, func(tx *bolt.Tx) error {
		if err := audit.AddCheckpoint(tx, audit.Sign(key, h)); err != nil {
			return err
		}
		_, err := audit.Append(tx, audit.Event{Kind: audit.KindCheckpoint, Subject: audit.CheckpointSubject(h.Seq), Outcome: "ok"})
		return err
	})
	if _, ok := due(); ok {
		t.Fatal("due right after a checkpoint")
	}
	appendN(t, db, 1)
	if h, ok := due(); !ok || h.Seq != 5 {
		t.Fatalf("due %v at %d, want 5", ok, h.Seq)
	}
	// A checkpoint of 5 whose entry lands after another entry (6): its
	// entry (7) is the head, but 6 is signed by nothing yet.
	mustUpdate(t, db, func(tx *bolt.Tx) error {
		if _, err := audit.Append(tx, audit.Event{Kind: "enqueue", Outcome: "ok"}); err != nil {
			return err
		}
		if err := audit.AddCheckpoint(tx, audit.Sign(key, heads5(t, tx))); err != nil {
			return err
		}
		_, err := audit.Append(tx, audit.Event{Kind: audit.KindCheckpoint, Subject: audit.CheckpointSubject(5), Outcome: "ok"})
		return err
	})
	h, ok = due()
	if !ok || h.Seq != 7 {
		t.Fatalf("due %v at %d, want 7: entry 6 is signed by no checkpoint", ok, h.Seq)
	}
	mustUpdate(t, db, func(tx *bolt.Tx) error {
		if err := audit.AddCheckpoint(tx, audit.Sign(key, h)); err != nil {
			return err
		}
		_, err := audit.Append(tx, audit.Event{Kind: audit.KindCheckpoint, Subject: audit.CheckpointSubject(h.Seq), Outcome: "ok"})
		return err
	})
	if _, ok := due(); ok {
		t.Fatal("due after the checkpoint of 7")
	}
}

// heads5 is the head as it was at seq 5.
func heads5(t *testing.T, tx *bolt.Tx) audit.Head {
	t.Helper()
	e, ok, err := audit.Get(tx, 5)
	if err != nil || !ok {
		t.Fatalf("entry 5: %v %v", ok, err)
	}
	return audit.Head{Seq: 5, Hash: e.Hash}
}

func Test_Audit_PublicKey_Forms(t *testing.T) {
	pub := testKey(3).Public().(ed25519.PublicKey)
	pemForm, err := audit.PublicKeyPEM(pub)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{audit.FormatPublicKey(pub), " " + audit.FormatPublicKey(pub) + "\n", hex.EncodeToString(pub), string(pemForm),
		strings.TrimRight(audit.FormatPublicKey(pub), "=")} {
		got, err := audit.ParsePublicKey(s)
		if err != nil || !got.Equal(pub) {
			t.Fatalf("parse %q: %x, %v", s, got, err)
		}
	}
	for _, s := range []string{"", "AAAA", "not a key", hex.EncodeToString(pub)[:62], "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"} {
		if _, err := audit.ParsePublicKey(s); err == nil {
			t.Fatalf("parse %q: no error", s)
		}
	}
}

// ------------------------------------------------------------------ export

func Test_Audit_Export_SinceAndCheckpoints(t *testing.T) {
	db := mustDB(t)
	key := testKey(1)
	heads := appendN(t, db, 30)
	mustUpdate(t, db, func(tx *bolt.Tx) error {
		if err := audit.AddCheckpoint(tx, audit.Sign(key, heads[29])); err != nil {
			return err
		}
		_, err := audit.Append(tx, audit.Event{Kind: audit.KindCheckpoint, Subject: audit.CheckpointSubject(30), Outcome: "ok"})
		return err
	})
	var out bytes.Buffer
	_ = db.View(func(tx *bolt.Tx) error {
		if n, err := audit.Export(tx, 12, &out); err != nil || n != 19 {
			t.Fatalf("export since 12: %d lines, %v", n, err)
		}
		return nil
	})
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var first, last map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"seq", "ts", "kind", "actor", "subject", "outcome", "digest", "prev", "hash"} {
		if _, ok := first[f]; !ok {
			t.Fatalf("line %s lacks %q", lines[0], f)
		}
	}
	if first["seq"] != 13.0 || first["prev"] != hex.EncodeToString(heads[11].Hash[:]) || first["hash"] != hex.EncodeToString(heads[12].Hash[:]) {
		t.Fatalf("first line %s", lines[0])
	}
	cp, _ := last["checkpoint"].(map[string]any)
	if last["kind"] != audit.KindCheckpoint || cp == nil || cp["seq"] != 30.0 || cp["hash"] != hex.EncodeToString(heads[29].Hash[:]) {
		t.Fatalf("last line %s", lines[len(lines)-1])
	}
	var rec audit.Record
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &rec); err != nil || rec.Checkpoint == nil || !rec.Checkpoint.SignatureValid() {
		t.Fatalf("checkpoint from the export does not verify: %+v, %v", rec.Checkpoint, err)
	}
	_ = db.View(func(tx *bolt.Tx) error {
		recs, err := audit.ReadRange(tx, 25, 3)
		if err != nil || len(recs) != 3 || recs[0].Seq != 26 || recs[2].Seq != 28 {
			t.Fatalf("read range: %d records, %v", len(recs), err)
		}
		if recs, _ := audit.ReadRange(tx, 31, 10); len(recs) != 0 {
			t.Fatalf("read past the head: %d records", len(recs))
		}
		return nil
	})
}

func BenchmarkAppend(b *testing.B) {
	db := mustDB(b)
	details := make([]byte, 256)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; {
		_ = db.Update(func(tx *bolt.Tx) error {
			for j := 0; j < 4096 && i < b.N; j, i = j+1, i+1 {
				if _, err := audit.Append(tx, audit.Event{Time: int64(i), Kind: "enqueue", Actor: "agent-7", Subject: "jobs", Outcome: "ok", Details: details}); err != nil {
					b.Fatal(err)
				}
			}
			return nil
		})
	}
}
