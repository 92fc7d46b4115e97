package fsm_test

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/mcpd/mcpd/fsm"
	bolt "go.etcd.io/bbolt"
)

// A restored state marked with its pending audit entry lets exactly one
// restore.record of that restore through: it appends the entry with the
// mark's actor and subject and removes the mark; a record of another
// restore, or the same again, is refused and changes nothing else.
func Test_FSM_RestoreRecord(t *testing.T) {
	src := mustFresh(t, "n1")
	snap := mustSnapshot(t, src)
	path := filepath.Join(t.TempDir(), "copy.db")
	if err := os.WriteFile(path, snap, 0o600); err != nil {
		t.Fatal(err)
	}
	mark := fsm.RestorePending{ID: "r1", Actor: "operator:ann", Subject: "index 0 audit 0 -; saved by n1"}
	// The restore keeps the cluster's level (2 here), above the file's.
	if err := fsm.PrepareRestore(path, &mark, 2); err != nil {
		t.Fatal(err)
	}
	marked, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f := mustFresh(t, "n2")
	if err := f.Restore(io.NopCloser(bytes.NewReader(marked))); err != nil {
		t.Fatal(err)
	}
	pending := func() (p fsm.RestorePending, ok bool) {
		_ = f.View(func(tx *bolt.Tx) error { p, ok = fsm.PendingRestore(tx); return nil })
		return p, ok
	}
	if p, ok := pending(); !ok || p != mark {
		t.Fatalf("pending after the restore: %+v %v, want %+v", p, ok, mark)
	}
	_ = f.View(func(tx *bolt.Tx) error {
		if l := fsm.ClusterLevel(tx); l != 2 {
			t.Errorf("cluster level %d after the restore, want the cluster's, 2", l)
		}
		return nil
	})
	index := f.AppliedIndex()
	record := func(id, actor string) {
		t.Helper()
		index++
		c := mustCmd(t, fsm.TypeRestoreRecord, "", 0, &fsm.RestorePending{ID: id, Actor: mark.Actor, Subject: mark.Subject})
		c.Actor = actor
		f.Apply(mustLog(t, index, 1_700_000_000_000, c))
	}
	// A refused record is no restore: it is audited as what it was.
	record("r0", "")
	if e := lastAuditEntry(t, f); e.Kind != "restore.record" || e.Subject != "r0" || e.Outcome != "conflict" {
		t.Fatalf("a record of another restore: audited %+v", e)
	}
	if _, ok := pending(); !ok {
		t.Fatal("a record of another restore removed the mark")
	}
	// Proposed by whichever leader: the entry names the operator who
	// restored.
	record("r1", "")
	if e := lastAuditEntry(t, f); e.Kind != "snapshot.restore" || e.Actor != mark.Actor || e.Subject != mark.Subject || e.Outcome != "ok" {
		t.Fatalf("the record: audited %+v", e)
	}
	if p, ok := pending(); ok {
		t.Fatalf("the mark %+v is left after its record", p)
	}
	record("r1", "")
	if e := lastAuditEntry(t, f); e.Kind != "restore.record" || e.Outcome != "conflict" {
		t.Fatalf("the record again: audited %+v", e)
	}

	// An offline restore takes the mark off its copy: the new node
	// records no restore it did not make.
	if err := fsm.PrepareRestore(path, nil, 0); err != nil {
		t.Fatal(err)
	}
	unmarked, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	g := mustFresh(t, "n3")
	if err := g.Restore(io.NopCloser(bytes.NewReader(unmarked))); err != nil {
		t.Fatal(err)
	}
	_ = g.View(func(tx *bolt.Tx) error {
		if p, ok := fsm.PendingRestore(tx); ok {
			t.Errorf("the unmarked copy holds %+v", p)
		}
		return nil
	})
}
