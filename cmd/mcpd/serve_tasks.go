package main

import (
	"flag"
	"fmt"
	"sync"
	"time"

	"github.com/mcpd/mcpd/cluster"
	"github.com/mcpd/mcpd/task"
)

// taskFlags are the delegation budget, the schedules' misfire grace and
// how long ended task trees are kept.
type taskFlags struct {
	limits    task.Limits
	grace     time.Duration
	retention time.Duration
}

// minTaskRetention is the shortest --task-retention: an operator or an
// agent must have time to read what a graph ended with, and a client
// retrying a submission (its envelope accepted within 5 minutes of its
// time) must find the first one's dedup record.
const minTaskRetention = time.Hour

// check refuses a retention too short to read what a graph ended with.
func (t *taskFlags) check() error {
	if t.retention != 0 && t.retention < minTaskRetention {
		return &usageError{fmt.Sprintf("--task-retention %v: at least %v, or 0 to keep ended tasks forever", t.retention, minTaskRetention)}
	}
	return nil
}

func (t *taskFlags) register(fs *flag.FlagSet) {
	t.limits = task.DefaultLimits
	fs.IntVar(&t.limits.MaxDepth, "task-max-depth", task.DefaultLimits.MaxDepth, "most agents in a delegation chain: a sub-task that would make it longer is refused")
	fs.IntVar(&t.limits.MaxFanout, "task-max-fanout", task.DefaultLimits.MaxFanout, "most sub-tasks delegated under one task, over all its submissions")
	fs.BoolVar(&t.limits.AllowRepeat, "task-allow-repeat", false, "let an agent appear twice in a delegation chain (refused by default: a delegation loop)")
	fs.Int64Var(&t.limits.MaxOutput, "task-max-output", task.DefaultLimits.MaxOutput, "largest task output stored, in bytes")
	fs.DurationVar(&t.retention, "task-retention", cluster.DefaultTaskRetention, "how long a task tree (a graph and what was delegated under it) is kept once all its tasks have ended; 0 keeps them forever. The leader's setting applies: give every node the same")
	fs.DurationVar(&t.grace, "schedule-misfire-grace", cluster.DefaultMisfireGrace, "how late a schedule's tick may fire as itself; older ticks follow the schedule's misfire policy")
}

// startLeaderDuties fires the schedules, and removes ended task trees
// past the retention, while the node leads; the function it returns
// stops both.
func startLeaderDuties(f *serveFlags, node *cluster.Node) func() {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { node.RunSchedules(f.tasks.grace, stop) })
	if f.tasks.retention > 0 {
		wg.Go(func() { node.RunTaskRetention(f.tasks.retention, 0, stop) })
	}
	return func() {
		close(stop)
		wg.Wait()
	}
}
