package main

import (
	"flag"
	"time"

	"github.com/mcpd/mcpd/cluster"
	"github.com/mcpd/mcpd/task"
)

// taskFlags are the delegation budget and the schedules' misfire grace.
type taskFlags struct {
	limits task.Limits
	grace  time.Duration
}

func (t *taskFlags) register(fs *flag.FlagSet) {
	t.limits = task.DefaultLimits
	fs.IntVar(&t.limits.MaxDepth, "task-max-depth", task.DefaultLimits.MaxDepth, "most agents in a delegation chain: a sub-task that would make it longer is refused")
	fs.IntVar(&t.limits.MaxFanout, "task-max-fanout", task.DefaultLimits.MaxFanout, "most sub-tasks delegated under one task, over all its submissions")
	fs.BoolVar(&t.limits.AllowRepeat, "task-allow-repeat", false, "let an agent appear twice in a delegation chain (refused by default: a delegation loop)")
	fs.Int64Var(&t.limits.MaxOutput, "task-max-output", task.DefaultLimits.MaxOutput, "largest task output stored, in bytes")
	fs.DurationVar(&t.grace, "schedule-misfire-grace", cluster.DefaultMisfireGrace, "how late a schedule's tick may fire as itself; older ticks follow the schedule's misfire policy")
}

// startSchedules fires the schedules while the node leads; the function
// it returns stops it.
func startSchedules(f *serveFlags, node *cluster.Node) func() {
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		node.RunSchedules(f.tasks.grace, stop)
	}()
	return func() {
		close(stop)
		<-done
	}
}
