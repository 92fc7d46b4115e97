package cluster_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/mcpd/mcpd/audit"
	"github.com/mcpd/mcpd/cluster"
	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/internal/testcluster"
	bolt "go.etcd.io/bbolt"
)

// Commands of a newer level are proposed only when every member of the
// configuration announced that level: a member of an older version (here
// a server added to the configuration that never announced anything)
// holds them back with a clear error, and nothing is proposed; a node
// whose announcement the state lost (here overwritten with level 0, as a
// node before levels would announce) announces it again on its own.
func Test_Cluster_CommandLevels(t *testing.T) {
	defer cluster.SetLevelCheckEvery(50 * time.Millisecond)()
	c := testcluster.Start(t, 3, testcluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	leader := c.WaitLeader()
	levels := func(nd *testcluster.Node) map[string]int {
		var out map[string]int
		_ = nd.Node.FSM().View(func(tx *bolt.Tx) error { out = fsm.NodeLevels(tx); return nil })
		return out
	}
	testcluster.WaitFor(t, 10*time.Second, func() bool {
		l := levels(leader)
		return l["n1"] == fsm.Level && l["n2"] == fsm.Level && l["n3"] == fsm.Level
	})
	if err := leader.Node.MembersApply(fsm.TypeAuditPrune); err != nil {
		t.Fatalf("every node announced level %d: %v", fsm.Level, err)
	}

	// Raft does not promise that the node that led at the start still
	// leads: a membership change goes to the leader of the moment, and is
	// made again when an election took the leadership from under it.
	member := func(what string, change func(r *raft.Raft) raft.Future) {
		t.Helper()
		testcluster.WaitFor(t, 20*time.Second, func() bool {
			err := change(c.WaitLeader().Node.Raft()).Error()
			switch {
			case err == nil:
				return true
			case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, raft.ErrLeadershipTransferInProgress):
				t.Logf("%s: %v", what, err)
				return false
			}
			t.Fatalf("%s: %v", what, err)
			return false
		})
	}

	// A member that announced nothing.
	member("add old", func(r *raft.Raft) raft.Future { return r.AddNonvoter("old", "127.0.0.1:1", 0, 5*time.Second) })
	leader = c.WaitLeader()
	err := leader.Node.MembersApply(fsm.TypeTaskPrune)
	if !errors.Is(err, cluster.ErrLevel) || !strings.Contains(err.Error(), "old must run a version of command level 1") {
		t.Fatalf("with an old member: %v", err)
	}
	// Nothing reaches the log for a refused command. An election appends
	// the new leader's no-op, so the log is measured again when the term
	// changed meanwhile.
	testcluster.WaitFor(t, 20*time.Second, func() bool {
		ld := c.WaitLeader()
		term, before := ld.Node.Raft().CurrentTerm(), ld.Node.Raft().LastIndex()
		if _, err := ld.Node.Call(ctx, fsm.TypeTaskPrune, "", &fsm.TaskPruneArgs{Roots: []string{"g1"}}); !errors.Is(err, cluster.ErrLevel) {
			t.Fatalf("a prune proposed with an old member: %v", err)
		}
		got := ld.Node.Raft().LastIndex()
		if ld.Node.Raft().CurrentTerm() != term {
			t.Logf("term %d -> %d while a refused command was checked; checking again", term, ld.Node.Raft().CurrentTerm())
			return false
		}
		if got != before {
			t.Fatalf("a refused command reached the log: index %d, was %d", got, before)
		}
		return true
	})
	if err := leader.Node.MembersApply(fsm.TypeEnqueue); err != nil {
		t.Fatalf("a level 0 command: %v", err)
	}
	member("remove old", func(r *raft.Raft) raft.Future { return r.RemoveServer("old", 0, 5*time.Second) })
	// Every member's configuration drops old once it has the change.
	testcluster.WaitFor(t, 10*time.Second, func() bool { return leader.Node.MembersApply(fsm.TypeTaskPrune) == nil })

	// n2's announcement lost: it announces again.
	var n2 *testcluster.Node
	for _, nd := range c.Nodes {
		if nd.ID == "n2" {
			n2 = nd
		}
	}
	// Its announcements are audit entries: the forced one and the one
	// it makes again follow those before.
	announced := func() int {
		n := 0
		_ = leader.Node.FSM().View(func(tx *bolt.Tx) error {
			_, err := audit.Scan(tx, audit.ScanOptions{}, func(r *audit.Record) bool {
				if r.Kind == "node.started" && r.Subject == "n2" {
					n++
				}
				return true
			})
			return err
		})
		return n
	}
	was := announced()
	cmd, err := fsm.NewCommand(fsm.TypeNodeStarted, "", 0, &fsm.NodeStartedArgs{Node: "n2", Epoch: n2.Node.Epoch()})
	if err != nil {
		t.Fatal(err)
	}
	// Submitted again if an election answers it unavailable (its outcome
	// maybe unknown): a second forced announcement changes nothing below.
	for {
		err := leader.Node.Submit(ctx, cmd)
		if err == nil {
			break
		}
		if !(errors.Is(err, cluster.ErrUnavailable) || errors.Is(err, cluster.ErrUnknown)) || ctx.Err() != nil {
			t.Fatal(err)
		}
		t.Logf("forced announcement: %v", err)
	}
	testcluster.WaitFor(t, 10*time.Second, func() bool {
		return announced() >= was+2 && levels(leader)["n2"] == fsm.Level
	})
	if err := leader.Node.MembersApply(fsm.TypeTaskPrune); err != nil {
		t.Fatalf("n2 announced again: %v", err)
	}
}

// A cluster whose members all run this version raises its cluster level
// to it on its own, once, and what the level changes then holds on
// every replica: an enqueue's audit entry names the message it stored.
func Test_Cluster_ClusterLevelRaised(t *testing.T) {
	c := testcluster.Start(t, 3, testcluster.Options{})
	clusterLevel := func(nd *testcluster.Node) (l int) {
		_ = nd.Node.FSM().View(func(tx *bolt.Tx) error { l = fsm.ClusterLevel(tx); return nil })
		return l
	}
	testcluster.WaitFor(t, 20*time.Second, func() bool {
		for _, nd := range c.Nodes {
			if clusterLevel(nd) != fsm.Level {
				return false
			}
		}
		return true
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := c.Dial("alice").Enqueue(ctx, "jobs", map[string]int{"n": 1})
	if err != nil {
		t.Fatal(err)
	}
	c.WaitApplied()
	want := fmt.Sprintf("jobs/%d", res.Seq)
	for _, nd := range c.Nodes {
		var enqueues []string
		raises := 0
		_ = nd.Node.FSM().View(func(tx *bolt.Tx) error {
			_, err := audit.Scan(tx, audit.ScanOptions{}, func(r *audit.Record) bool {
				switch r.Kind {
				case "enqueue":
					enqueues = append(enqueues, r.Subject)
				case "cluster.level":
					// One raise; one proposed again after an election
					// is refused.
					if r.Outcome == "ok" {
						raises++
					}
				}
				return true
			})
			return err
		})
		if len(enqueues) != 1 || enqueues[0] != want || raises != 1 {
			t.Errorf("%s: enqueues audited as %q and %d cluster level raises, want [%s] and 1", nd.ID, enqueues, raises, want)
		}
	}
}

// fileSink is a raft.SnapshotSink writing to a file.
type fileSink struct{ *os.File }

func (s fileSink) ID() string    { return "file" }
func (s fileSink) Cancel() error { return s.Close() }

// A snapshot restore whose leader did not record it (it lost the
// leadership right after raft took the file) is recorded by the node
// that leads next, from the mark the restored state carries: once, on
// every node, naming the operator, and the mark goes.
func Test_Cluster_RestoreMarkRecorded(t *testing.T) {
	c := testcluster.Start(t, 3, testcluster.Options{})
	leader := c.WaitLeader()
	testcluster.WaitFor(t, 20*time.Second, func() bool { return c.WaitLeader().Node.MembersApply(fsm.TypeRestoreRecord) == nil })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Dial("alice").Enqueue(ctx, "jobs", map[string]int{"n": 1}); err != nil {
		t.Fatal(err)
	}
	c.WaitApplied()

	// A marked copy of the leader's state, as the admin API makes one.
	path := filepath.Join(t.TempDir(), "state.db")
	out, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := leader.Node.FSM().Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if err := snap.Persist(fileSink{out}); err != nil {
		t.Fatal(err)
	}
	snap.Release()
	mark := fsm.RestorePending{ID: "r1", Actor: "operator:ann", Subject: "index 9 audit 9 h; saved by n1"}
	if err := fsm.MarkRestore(path, mark); err != nil {
		t.Fatal(err)
	}
	var meta raft.SnapshotMeta
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	_ = db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket([]byte("meta")).Get([]byte("applied"))
		meta.Index, meta.Term = binary.BigEndian.Uint64(v), binary.BigEndian.Uint64(v[8:])
		return nil
	})
	db.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	meta.Version, meta.Size = raft.SnapshotVersionMax, fi.Size()

	// Raft takes it; nobody records it but the leaders' duty.
	in, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if err := leader.Node.Raft().Restore(&meta, in, time.Minute); err != nil {
		t.Fatalf("restore (leader %s): %v", leader.ID, err)
	}
	testcluster.WaitFor(t, 20*time.Second, func() bool {
		for _, nd := range c.Nodes {
			var pending bool
			_ = nd.Node.FSM().View(func(tx *bolt.Tx) error { _, pending = fsm.PendingRestore(tx); return nil })
			if pending {
				return false
			}
		}
		return true
	})
	c.WaitApplied()
	for _, nd := range c.Nodes {
		var got []audit.Record
		_ = nd.Node.FSM().View(func(tx *bolt.Tx) error {
			_, err := audit.Scan(tx, audit.ScanOptions{}, func(r *audit.Record) bool {
				if r.Kind == "snapshot.restore" && r.Outcome == "ok" {
					got = append(got, *r)
				}
				return true
			})
			return err
		})
		if len(got) != 1 || got[0].Actor != mark.Actor || got[0].Subject != mark.Subject {
			t.Errorf("%s: restore entries %+v, want one by %s naming %q", nd.ID, got, mark.Actor, mark.Subject)
		}
	}
}
