package audit_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/json"
	"strings"
	"testing"

	"github.com/mcpd/mcpd/audit"
	bolt "go.etcd.io/bbolt"
)

// exportFixture is the export of 40 entries with checkpoints of 10 and 30
// recorded (by entries 11 and 32) as the FSM records them.
func exportFixture(t *testing.T, key ed25519.PrivateKey) []string {
	t.Helper()
	db := mustDB(t)
	for _, n := range []int{10, 20, 8} {
		heads := appendN(t, db, n)
		if n == 8 {
			break
		}
		h := heads[len(heads)-1]
		if n == 20 { // a checkpoint that names an entry before the head
			h = heads[len(heads)-2]
		}
		mustUpdate(t, db, func(tx *bolt.Tx) error {
			if err := audit.AddCheckpoint(tx, audit.Sign(key, h)); err != nil {
				return err
			}
			_, err := audit.Append(tx, audit.Event{Kind: audit.KindCheckpoint, Subject: audit.CheckpointSubject(h.Seq), Outcome: "ok"})
			return err
		})
	}
	var out bytes.Buffer
	_ = db.View(func(tx *bolt.Tx) error {
		_, err := audit.Export(tx, 0, &out)
		return err
	})
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 40 {
		t.Fatalf("%d lines", len(lines))
	}
	return lines
}

func verifyLines(t *testing.T, lines []string, pub ed25519.PublicKey) audit.Report {
	t.Helper()
	r, err := audit.VerifyExport(strings.NewReader(strings.Join(lines, "\n")+"\n"), pub)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// edit changes line i through its decoded record.
func edit(t *testing.T, lines []string, i int, fn func(r *audit.Record)) []string {
	t.Helper()
	var r audit.Record
	if err := json.Unmarshal([]byte(lines[i]), &r); err != nil {
		t.Fatal(err)
	}
	fn(&r)
	b, err := json.Marshal(&r)
	if err != nil {
		t.Fatal(err)
	}
	out := append([]string(nil), lines...)
	out[i] = string(b)
	return out
}

func Test_Chain_VerifyExport(t *testing.T) {
	key := testKey(1)
	pub := key.Public().(ed25519.PublicKey)
	lines := exportFixture(t, key)
	if r := verifyLines(t, lines, pub); !r.OK || r.Entries != 40 || r.Checkpoints != 2 || r.First != 0 {
		t.Fatalf("whole export: %s", r)
	}
	// A range after some seq starts from its first prev.
	if r := verifyLines(t, lines[15:], pub); !r.OK || r.Entries != 25 || r.First != 16 || !strings.Contains(r.String(), "from seq 16") {
		t.Fatalf("range: %s", r)
	}
	other := testKey(2)
	for _, tc := range []struct {
		name  string
		lines []string
		pub   ed25519.PublicKey
		seq   uint64
		why   audit.Reason
	}{
		{"field_changed", edit(t, lines, 6, func(r *audit.Record) { r.Actor = "mallory" }), pub, 7, audit.Changed},
		{"line_removed", append(append([]string(nil), lines[:6]...), lines[7:]...), pub, 7, audit.Missing},
		{"lines_swapped", append(append(append([]string(nil), lines[:6]...), lines[7], lines[6]), lines[8:]...), pub, 7, audit.Missing},
		{"rehashed", edit(t, lines, 6, func(r *audit.Record) { r.Actor = "mallory"; r.Hash = r.ComputeHash() }), pub, 8, audit.Reordered},
		{"first_prev_not_zero", edit(t, lines, 0, func(r *audit.Record) { r.Prev[0] = 1; r.Hash = r.ComputeHash() }), pub, 1, audit.Reordered},
		{"signature_changed", edit(t, lines, 10, func(r *audit.Record) { r.Checkpoint.Sig[0] ^= 1 }), nil, 10, audit.BadSignature},
		{"another_key", edit(t, lines, 10, func(r *audit.Record) { *r.Checkpoint = audit.Sign(other, audit.Head{Seq: 10, Hash: r.Checkpoint.Hash}) }), pub, 10, audit.BadSignature},
		{"signed_other_hash", edit(t, lines, 31, func(r *audit.Record) { *r.Checkpoint = audit.Sign(key, audit.Head{Seq: 30, Hash: sha256.Sum256(nil)}) }), pub, 30, audit.CheckpointMismatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantBroken(t, verifyLines(t, tc.lines, tc.pub), tc.seq, tc.why)
		})
	}
	if _, err := audit.VerifyExport(strings.NewReader("not json\n"), nil); err == nil {
		t.Fatal("garbage verified")
	}
}
