package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
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

// restoreMarked has raft on the leader install the state of a fresh
// node (one that has applied nothing: no node's level announced, cluster
// level 0, as in a backup from before an upgrade) marked with mark, as
// the admin API's restore does, and returns the leader.
func restoreMarked(t *testing.T, c *testcluster.Cluster, mark fsm.RestorePending) *testcluster.Node {
	t.Helper()
	dir := t.TempDir()
	src, err := fsm.Open(filepath.Join(dir, "src.db"), "x")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "copy.db")
	out, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := src.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if err := snap.Persist(fileSink{out}); err != nil {
		t.Fatal(err)
	}
	snap.Release()
	src.Close()
	leader := c.WaitLeader()
	level, err := leader.Node.ClusterLevel()
	if err != nil {
		t.Fatal(err)
	}
	if err := fsm.PrepareRestore(path, &mark, level); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	in, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	meta := raft.SnapshotMeta{Version: raft.SnapshotVersionMax, Index: 1, Term: 1, Size: fi.Size()}
	if err := leader.Node.Raft().Restore(&meta, in, time.Minute); err != nil {
		t.Fatalf("restore (leader %s): %v", leader.ID, err)
	}
	return leader
}

// restoreEntries returns nd's snapshot.restore audit entries, and how
// many entries of any kind refused a restore record.
func restoreEntries(t *testing.T, nd *testcluster.Node) (got []audit.Record, refused int) {
	t.Helper()
	err := nd.Node.FSM().View(func(tx *bolt.Tx) error {
		_, err := audit.Scan(tx, audit.ScanOptions{}, func(r *audit.Record) bool {
			switch r.Kind {
			case "snapshot.restore":
				got = append(got, *r)
			case "restore.record":
				refused++
			}
			return true
		})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return got, refused
}

// A snapshot restore records itself: the restoring leader records the
// mark at once, although the restored state (from before an upgrade)
// holds no node's level; a mark nobody recorded (the leader lost its
// leadership first) is recorded by the leader's duty. Either way once,
// on every node, naming the operator, the mark gone, and the restore
// keeps the cluster's level.
func Test_Cluster_RestoreMarkRecorded(t *testing.T) {
	c := testcluster.Start(t, 3, testcluster.Options{})
	testcluster.WaitFor(t, 20*time.Second, func() bool {
		l, err := c.WaitLeader().Node.ClusterLevel()
		return err == nil && l == fsm.Level
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	marks := []fsm.RestorePending{
		{ID: "r1", Actor: "operator:ann", Subject: "index 1 audit 0 -; saved by x"},
		{ID: "r2", Actor: "operator:bob", Subject: "index 1 audit 0 -; saved by x, again"},
	}
	for i, mark := range marks {
		leader := restoreMarked(t, c, mark)
		if i == 0 {
			// The restoring leader records it itself.
			rep, err := leader.Node.RecordRestore(ctx, &mark)
			if err == nil {
				err = rep.Err
			}
			if err != nil && !errors.Is(err, cluster.ErrUnknown) {
				t.Fatalf("the restoring leader's record: %v", err)
			}
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
			got, refused := restoreEntries(t, nd)
			if len(got) != 1 || got[0].Actor != mark.Actor || got[0].Subject != mark.Subject || got[0].Outcome != "ok" {
				t.Errorf("%s after restore %s: restore entries %+v, want one by %s naming %q", nd.ID, mark.ID, got, mark.Actor, mark.Subject)
			}
			if refused > 1 {
				t.Errorf("%s: %d refused restore records", nd.ID, refused)
			}
			if l, err := nd.Node.ClusterLevel(); err != nil || l != fsm.Level {
				t.Errorf("%s: cluster level %d after the restore (%v), want %d", nd.ID, l, err, fsm.Level)
			}
		}
	}
}

// A rolling upgrade: nodes that announce a lower command level (an older
// version) hold the cluster level at the highest one every member runs,
// and the leader raises it to this version's once the last node is
// restarted on it, never before: a node below a raise would stop at it.
func Test_Cluster_ClusterLevelFollowsUpgrade(t *testing.T) {
	old := fsm.LevelOf(fsm.TypeClusterLevel)
	if old >= fsm.Level {
		t.Skipf("this version's level %d has no older level with cluster levels", fsm.Level)
	}
	upgraded := cluster.SetAnnouncedLevel(t, old)
	c := testcluster.Start(t, 3, testcluster.Options{})
	clusterLevels := func() []int {
		var out []int
		for _, nd := range c.Nodes {
			l, err := nd.Node.ClusterLevel()
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, l)
		}
		return out
	}
	testcluster.WaitFor(t, 20*time.Second, func() bool { return slices.Equal(clusterLevels(), []int{old, old, old}) })

	upgraded()
	for i, nd := range c.Nodes {
		c.StopNode(nd)
		c.RestartNode(nd)
		testcluster.WaitFor(t, 20*time.Second, nd.Node.Ready)
		c.WaitApplied()
		want := old
		if i == len(c.Nodes)-1 {
			want = fsm.Level
		}
		testcluster.WaitFor(t, 20*time.Second, func() bool { return c.WaitLeader().Node.MembersApply(fsm.TypeClusterLevel) == nil })
		if i < len(c.Nodes)-1 {
			// Nothing to wait for: the level must stay while the leader's
			// duty (every 200 ms) has several turns.
			for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
				if got := clusterLevels(); !slices.Equal(got, []int{old, old, old}) {
					t.Fatalf("with %d of 3 nodes upgraded: cluster levels %v, want %d", i+1, got, old)
				}
			}
			continue
		}
		testcluster.WaitFor(t, 20*time.Second, func() bool { return slices.Equal(clusterLevels(), []int{want, want, want}) })
	}
}
