package cluster_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

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

	// A member that announced nothing.
	if err := leader.Node.Raft().AddNonvoter("old", "127.0.0.1:1", 0, 5*time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	err := leader.Node.MembersApply(fsm.TypeTaskPrune)
	if !errors.Is(err, cluster.ErrLevel) || !strings.Contains(err.Error(), "old must run a version of command level 1") {
		t.Fatalf("with an old member: %v", err)
	}
	before := leader.Node.Raft().LastIndex()
	if _, err := leader.Node.Call(ctx, fsm.TypeTaskPrune, "", &fsm.TaskPruneArgs{Roots: []string{"g1"}}); !errors.Is(err, cluster.ErrLevel) {
		t.Fatalf("a prune proposed with an old member: %v", err)
	}
	if got := leader.Node.Raft().LastIndex(); got != before {
		t.Fatalf("a refused command reached the log: index %d, was %d", got, before)
	}
	if err := leader.Node.MembersApply(fsm.TypeEnqueue); err != nil {
		t.Fatalf("a level 0 command: %v", err)
	}
	if err := leader.Node.Raft().RemoveServer("old", 0, 5*time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	if err := leader.Node.MembersApply(fsm.TypeTaskPrune); err != nil {
		t.Fatalf("the old member removed: %v", err)
	}

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
	if err := leader.Node.Submit(ctx, cmd); err != nil {
		t.Fatal(err)
	}
	testcluster.WaitFor(t, 10*time.Second, func() bool {
		return announced() >= was+2 && levels(leader)["n2"] == fsm.Level
	})
	if err := leader.Node.MembersApply(fsm.TypeTaskPrune); err != nil {
		t.Fatalf("n2 announced again: %v", err)
	}
}
