package cluster_test

import (
	"context"
	"testing"
	"time"

	"github.com/mcpd/mcpd/audit"
	"github.com/mcpd/mcpd/client"
	"github.com/mcpd/mcpd/internal/testcluster"
	"github.com/mcpd/mcpd/task"
	bolt "go.etcd.io/bbolt"
)

// Task retention on a 3-node cluster: every node runs it, the leader of
// the moment proposes; a graph whose tasks have all ended goes from
// every node, with one audit entry saying what went, and a graph still
// waiting for an agent stays.
func Test_Cluster_TaskRetention(t *testing.T) {
	c := testcluster.Start(t, 3, testcluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	worker := c.Dial("worker")
	wctx, stopWork := context.WithCancel(ctx)
	defer stopWork()
	go worker.Work(wctx, []client.Capability{{Name: "edit", MaxInflight: 4}}, func(ctx context.Context, a *client.TaskAssignment) (any, error) {
		return "edited", nil
	})
	origin := c.Dial("origin")
	done, _, err := origin.SubmitTasks(ctx, client.SubmitRequest{Intent: "kept a moment", Tasks: []client.TaskSpec{
		{Ref: "a", Capability: "edit", Input: 1}, {Ref: "b", Capability: "edit", Input: 2, Deps: []string{"a"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	waiting, _, err := origin.SubmitTasks(ctx, client.SubmitRequest{Intent: "no agent for it", Tasks: []client.TaskSpec{{Ref: "x", Capability: "nobody", Input: 3}}})
	if err != nil {
		t.Fatal(err)
	}
	testcluster.WaitFor(t, 20*time.Second, func() bool {
		g, err := origin.GetTask(ctx, done["b"])
		return err == nil && g.Task.State == task.StateSucceeded
	})

	stop := make(chan struct{})
	finished := make(chan struct{}, len(c.Nodes))
	for _, nd := range c.Nodes {
		go func() {
			nd.Node.RunTaskRetention(time.Millisecond, 20*time.Millisecond, stop)
			finished <- struct{}{}
		}()
	}
	defer func() {
		close(stop)
		for range c.Nodes {
			<-finished
		}
	}()
	stored := func(nd *testcluster.Node, id string) bool {
		var k *task.Task
		if err := nd.Node.FSM().View(func(tx *bolt.Tx) (err error) { k, err = task.Get(tx, id); return err }); err != nil {
			t.Fatal(err)
		}
		return k != nil
	}
	testcluster.WaitFor(t, 20*time.Second, func() bool {
		for _, nd := range c.Nodes {
			if stored(nd, done["a"]) || stored(nd, done["b"]) {
				return false
			}
		}
		return true
	})
	c.WaitConverged()
	for _, nd := range c.Nodes {
		if !stored(nd, waiting["x"]) {
			t.Fatalf("%s: the waiting task %s was removed", nd.ID, waiting["x"])
		}
		var trees, tasks uint64
		var prunes []audit.Entry
		if err := nd.Node.FSM().View(func(tx *bolt.Tx) error {
			trees, tasks = task.Pruned(tx)
			_, err := audit.Scan(tx, audit.ScanOptions{}, func(r *audit.Record) bool {
				if r.Kind == "task.prune" {
					prunes = append(prunes, r.Entry)
				}
				return true
			})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if trees != 1 || tasks != 2 {
			t.Fatalf("%s: pruned %d trees, %d tasks; want 1 and 2", nd.ID, trees, tasks)
		}
		// One entry removed the tree; a leader that took over before it
		// had applied that one may have proposed it again, finding
		// nothing left to remove.
		removed := 0
		for _, e := range prunes {
			switch {
			case e.Outcome != "ok":
				t.Fatalf("%s: prune audit entry %+v", nd.ID, e)
			case e.Subject == "1 trees, 2 tasks":
				removed++
			case e.Subject != "0 trees, 0 tasks":
				t.Fatalf("%s: prune audit entry %+v", nd.ID, e)
			}
		}
		if removed != 1 {
			t.Fatalf("%s: prune audit entries %+v", nd.ID, prunes)
		}
	}
	if _, err := origin.GetTask(ctx, done["a"]); !client.IsCode(err, "not_found") {
		t.Fatalf("task.get of a removed task: %v", err)
	}
}
