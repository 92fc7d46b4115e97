package fsm_test

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/queue"
	bolt "go.etcd.io/bbolt"
)

// Each NodeStarted records the level it announces, the latest one
// winning; a node of a version before levels announces none, level 0.
// Only the newest command types need a level.
func Test_FSM_NodeLevels(t *testing.T) {
	f := mustFresh(t, "n1")
	for i, a := range []fsm.NodeStartedArgs{
		{Node: "n1", Epoch: 1, Level: fsm.Level},
		{Node: "n2", Epoch: 1},
		{Node: "n3", Epoch: 1, Level: 7},
		{Node: "n3", Epoch: 2, Level: fsm.Level},
		{Node: "n4", Epoch: 1, Level: -3},
	} {
		f.Apply(mustLog(t, uint64(i+1), 1_700_000_000_000, mustCmd(t, fsm.TypeNodeStarted, "", 0, &a)))
	}
	var got map[string]int
	_ = f.View(func(tx *bolt.Tx) error { got = fsm.NodeLevels(tx); return nil })
	if want := map[string]int{"n1": fsm.Level, "n2": 0, "n3": fsm.Level, "n4": 0}; !reflect.DeepEqual(got, want) {
		t.Fatalf("levels %v, want %v", got, want)
	}
	for typ, want := range map[fsm.MessageType]int{fsm.TypeEnqueue: 0, fsm.TypeOperatorRemove: 0, fsm.TypeTaskPrune: 1, fsm.TypeAuditPrune: 1, fsm.TypeClusterLevel: 2, fsm.TypeRestoreRecord: 3} {
		if got := fsm.LevelOf(typ); got != want || got > fsm.Level {
			t.Errorf("LevelOf(%d) = %d, want %d (this version applies up to %d)", typ, got, want, fsm.Level)
		}
	}
}

// The cluster level switches what an enqueue's audit entry names at one
// entry on every replica: QUEUE before level 2, QUEUE/SEQ from it. It
// never goes down, its raise is audited, and a version below the level
// stops at its raise and refuses to open a state at it.
func Test_FSM_ClusterLevel(t *testing.T) {
	f := mustFresh(t, "n1")
	const conn = "n1/1/1"
	at, index := int64(1_700_000_000_000), uint64(0)
	apply := func(actor string, c fsm.Command) {
		t.Helper()
		index++
		c.Actor = actor
		f.Apply(mustLog(t, index, at+int64(index), c))
	}
	level := func() (l int) {
		_ = f.View(func(tx *bolt.Tx) error { l = fsm.ClusterLevel(tx); return nil })
		return l
	}
	enqueue := func(q, id string) string {
		t.Helper()
		apply("alice", mustCmd(t, fsm.TypeEnqueue, conn, index+1, &queue.EnqueueArgs{Queue: q, From: "alice", ID: id, Env: []byte(tEnv)}))
		return lastAuditEntry(t, f).Subject
	}
	if l := level(); l != 0 {
		t.Fatalf("a fresh state at cluster level %d", l)
	}
	if got := enqueue("jobs", "m1"); got != "jobs" {
		t.Fatalf("enqueue at level 0 audited as %q, want jobs", got)
	}
	for _, bad := range []int{0, -1} {
		apply("", mustCmd(t, fsm.TypeClusterLevel, "", 0, &fsm.ClusterLevelArgs{Level: bad}))
		if e := lastAuditEntry(t, f); e.Kind != "cluster.level" || e.Outcome != "bad_request" || level() != 0 {
			t.Fatalf("level %d: audited %+v, cluster level %d", bad, e, level())
		}
	}
	apply("", mustCmd(t, fsm.TypeClusterLevel, "", 0, &fsm.ClusterLevelArgs{Level: 2}))
	if e := lastAuditEntry(t, f); e.Kind != "cluster.level" || e.Subject != "2" || e.Outcome != "ok" || level() != 2 {
		t.Fatalf("raise to 2: audited %+v, cluster level %d", e, level())
	}
	if got := enqueue("jobs", "m2"); got != "jobs/2" {
		t.Fatalf("enqueue at level 2 audited as %q, want jobs/2", got)
	}
	if got := enqueue("jobs", "m1"); got != "jobs/1" {
		t.Fatalf("a duplicate enqueue at level 2 audited as %q, want the message it found, jobs/1", got)
	}
	if got := enqueue("@bob", "m3"); got != "@bob/1" {
		t.Fatalf("a send at level 2 audited as %q, want @bob/1", got)
	}
	for _, l := range []int{1, 2} {
		apply("", mustCmd(t, fsm.TypeClusterLevel, "", 0, &fsm.ClusterLevelArgs{Level: l}))
		if e := lastAuditEntry(t, f); e.Outcome != "conflict" || level() != 2 {
			t.Fatalf("level %d at level 2: audited %+v, cluster level %d", l, e, level())
		}
	}

	// A state above this version's level is refused at open.
	path := filepath.Join(t.TempDir(), "state.db")
	g := mustOpen(t, path, "n1")
	g.Apply(mustLog(t, 1, at, mustCmd(t, fsm.TypeClusterLevel, "", 0, &fsm.ClusterLevelArgs{Level: fsm.Level})))
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("meta")).Put([]byte("cluster_level"), []byte{fsm.Level + 1})
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if _, err := fsm.Open(path, "n1"); err == nil || !strings.Contains(err.Error(), "run a newer version") {
		t.Fatalf("open of a state above this version's level: %v", err)
	}
	// And at a snapshot restore, which changes nothing.
	file, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Restore(file); err == nil || !strings.Contains(err.Error(), "run a newer version") || level() != 2 {
		t.Fatalf("restore of a state above this version's level: %v (cluster level %d)", err, level())
	}

	// A raise above this version's level: it stops rather than guess
	// (and applies again from the log after a restart, as any failed
	// apply).
	func() {
		defer func() {
			if r := recover(); r == nil || !strings.Contains(r.(string), "run a newer version") {
				t.Fatalf("applying a raise above this version: %v", r)
			}
		}()
		apply("", mustCmd(t, fsm.TypeClusterLevel, "", 0, &fsm.ClusterLevelArgs{Level: fsm.Level + 1}))
	}()
}
