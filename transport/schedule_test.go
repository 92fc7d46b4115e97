package transport_test

import (
	"context"
	"testing"
	"time"

	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/internal/testcluster"
	"github.com/mcpd/mcpd/queue"
	"github.com/mcpd/mcpd/schedule"
	"github.com/mcpd/mcpd/transport"
	bolt "go.etcd.io/bbolt"
)

// A schedule firing every second keeps firing once per tick across a
// leader kill: every node runs the schedules, only the leader of the
// moment proposes, each tick is applied once. With the failover inside the
// misfire grace no tick is lost either; every firing enqueued one message.
func TestScheduleAcrossLeaderKill(t *testing.T) {
	c := startCluster(t, 3, transport.Options{})
	leader := c.WaitLeader()
	run := func(nd *testcluster.Node) {
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() { defer close(done); nd.Node.RunSchedules(5*time.Second, stop) }()
		t.Cleanup(func() { close(stop); <-done })
	}
	for _, nd := range c.Nodes {
		run(nd)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTime)
	defer cancel()
	s := schedule.Schedule{Name: "pulse", Cron: "* * * * * *", Misfire: schedule.MisfireOnce, Origin: "rhythm",
		Action: schedule.Action{Queue: "rhythm.pulse", Body: []byte(`{"beat":true}`)}}
	rep, err := leader.Node.Call(ctx, fsm.TypeScheduleAdd, "alice", &fsm.ScheduleAddArgs{Schedule: s})
	if err != nil || rep.Err != nil {
		t.Fatalf("schedule add: %v %v", err, rep)
	}
	history := func(nd *testcluster.Node) (h []schedule.Firing, ready int64) {
		_ = nd.Node.Read(func(tx *bolt.Tx) error {
			h, _ = schedule.History(tx, "pulse", 0)
			info, _ := queue.ReadInfo(tx, "rhythm.pulse")
			ready = info.Ready
			return nil
		})
		return h, ready
	}
	testcluster.WaitFor(t, 15*time.Second, func() bool { h, _ := history(leader); return len(h) >= 3 })
	c.KillNode(leader)
	next := c.WaitLeader()
	before, _ := history(next)
	testcluster.WaitFor(t, 20*time.Second, func() bool { h, _ := history(next); return len(h) >= len(before)+3 })
	c.RestartNode(leader)
	run(leader)
	testcluster.WaitFor(t, 20*time.Second, func() bool { h, _ := history(leader); return len(h) >= len(before)+4 })
	// Pause it so that every node can end with the same history.
	if rep, err := next.Node.Call(ctx, fsm.TypeScheduleSet, "alice", &fsm.ScheduleSetArgs{Name: "pulse", What: "pause"}); err != nil || rep.Err != nil {
		t.Fatalf("pause: %v %v", err, rep)
	}
	c.WaitConverged()
	h, ready := history(next)
	for i, f := range h {
		if f.Skip || f.Missed != 0 || f.Error != "" || f.Result == "" {
			t.Errorf("firing %d: %+v", i, f)
		}
		if i > 0 && f.Tick != h[i-1].Tick+1000 {
			t.Errorf("tick %d: %d after %d: a gap or a duplicate", i, f.Tick, h[i-1].Tick)
		}
	}
	if ready != int64(len(h)) {
		t.Fatalf("%d firings enqueued %d messages", len(h), ready)
	}
	t.Logf("%d ticks fired once each across the failover", len(h))
}
