package systemtest

import (
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mcpd/mcpd/client"
)

// A 100-task graph on three nodes while the leader is SIGKILLed in the
// middle of it: three workers, one per node, each reconnecting elsewhere
// when its node dies. The graph completes, every task succeeded exactly
// once (one "succeeded" in its history, its output from its own attempt
// with every dependency's output in hand), and every node ends with the
// same state.
func Test_Fault_TaskGraphLeaderKill(t *testing.T) {
	const layers, width = 10, 10
	c := newFaultCluster(t, 3, clusterOpts{})
	c.waitAllReady(30 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	var ran, badDeps atomic.Int64
	work := func(ctx context.Context, a *client.TaskAssignment) (any, error) {
		ran.Add(1)
		var in struct{ Deps int }
		_ = json.Unmarshal(a.Body(), &in)
		if len(a.DepsOutput) != in.Deps {
			badDeps.Add(1)
			return nil, fmt.Errorf("task %s: %d dependency outputs, want %d", a.ID, len(a.DepsOutput), in.Deps)
		}
		select { // the work itself
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			return nil, client.Retry(ctx.Err())
		}
		return map[string]any{"task": a.ID, "attempt": a.Attempt}, nil
	}
	for k := 1; k <= 3; k++ {
		w := c.dial(ctx, fmt.Sprintf("worker%d", k), c.urls(k)...)
		go func() {
			_ = w.Work(ctx, []client.Capability{{Name: "step", MaxInflight: 4}}, work)
		}()
	}
	origin := c.dial(ctx, "origin", c.urls(2)...)
	var specs []client.TaskSpec
	for l := range layers {
		for i := range width {
			s := client.TaskSpec{Ref: fmt.Sprintf("l%d-%d", l, i), Capability: "step", TimeoutMs: 3000, MaxAttempts: 10}
			if l > 0 {
				s.Deps = []string{fmt.Sprintf("l%d-%d", l-1, i), fmt.Sprintf("l%d-%d", l-1, (i+1)%width)}
			}
			s.Input = map[string]int{"deps": len(s.Deps)}
			specs = append(specs, s)
		}
	}
	ids, root, err := origin.SubmitTasks(ctx, client.SubmitRequest{Intent: "a long pipeline through a failover", Tasks: specs})
	if err != nil || len(ids) != layers*width {
		t.Fatalf("submit: %d ids, %v", len(ids), err)
	}
	states := func() (map[string]int, []*client.Task, error) {
		g, err := origin.GetTask(ctx, root)
		if err != nil {
			return nil, nil, err
		}
		n := map[string]int{}
		for _, k := range g.Tasks {
			n[k.State]++
		}
		return n, g.Tasks, nil
	}
	waitFor(t, 60*time.Second, "a third of the graph", func() error {
		n, _, err := states()
		if err != nil {
			return err
		}
		if n["succeeded"] < layers*width/3 {
			return fmt.Errorf("%v", n)
		}
		return nil
	})
	leader := c.leader(20 * time.Second)
	n, _, _ := states()
	t.Logf("killing the leader %s with %v", leader.id, n)
	leader.kill()
	var tasks []*client.Task
	waitFor(t, 120*time.Second, "the whole graph", func() error {
		n, ts, err := states()
		if err != nil {
			return err
		}
		if n["succeeded"] != layers*width {
			return fmt.Errorf("%v", n)
		}
		tasks = ts
		return nil
	})
	leader.start(t)
	c.waitAllReady(30 * time.Second)
	c.converged(30 * time.Second)

	retried := 0
	for _, k := range tasks {
		succeeded := 0
		for _, e := range k.History {
			if e.Event == "succeeded" {
				succeeded++
			}
		}
		var out struct {
			Task    string
			Attempt int
		}
		if err := json.Unmarshal(k.Output, &out); err != nil || succeeded != 1 || out.Task != k.ID || out.Attempt != k.Attempt {
			t.Errorf("task %s: %d successes, output %s of attempt %d", k.ID, succeeded, k.Output, k.Attempt)
		}
		if k.Attempt > 1 {
			retried++
		}
	}
	if badDeps.Load() != 0 {
		t.Errorf("%d tasks ran without their dependencies' outputs", badDeps.Load())
	}
	t.Logf("%d tasks succeeded once each; %d handler runs, %d tasks needed more than one attempt", len(tasks), ran.Load(), retried)
}

// A schedule firing every second across a leader SIGKILL fires every
// tick once: consecutive ticks 1000 ms apart on every node (the failover
// stays inside the misfire grace, so no tick is skipped either), and one
// message per firing.
func Test_Fault_ScheduleLeaderKill(t *testing.T) {
	c := newFaultCluster(t, 3, clusterOpts{})
	c.waitAllReady(30 * time.Second)
	leader := c.leader(20 * time.Second)
	other := c.others(leader)[0]
	admin := func(nd *fnode, args ...string) string {
		t.Helper()
		out, stderr, err := mcpdOut(t, append(args, "--data-dir", nd.data)...)
		if err != nil {
			t.Fatalf("mcpd %v on %s: %v\n%s", args, nd.id, err, stderr)
		}
		return out
	}
	admin(other, "schedule", "add", "pulse", "--cron", "* * * * * *", "--enqueue", "rhythm.pulse", "--body", `{"beat":true}`, "--misfire", "skip")
	type firing struct {
		Tick    int64
		Skipped bool
		Result  string
	}
	// A follower's read may trail the commit: a schedule it has not
	// applied yet is not found there.
	history := func(nd *fnode) ([]firing, error) {
		out, stderr, err := mcpdOut(t, "schedule", "history", "pulse", "--limit", "0", "--json", "--data-dir", nd.data)
		if err != nil {
			return nil, fmt.Errorf("%v: %s", err, stderr)
		}
		var h []firing
		return h, json.Unmarshal([]byte(out), &h)
	}
	ticks := func(nd *fnode, atLeast int) func() error {
		return func() error {
			h, err := history(nd)
			if err == nil && len(h) < atLeast {
				err = fmt.Errorf("%d ticks", len(h))
			}
			return err
		}
	}
	waitFor(t, 20*time.Second, "three ticks", ticks(other, 3))
	leader.kill()
	h, _ := history(other)
	waitFor(t, 30*time.Second, "three more ticks after the kill", ticks(other, len(h)+3))
	leader.start(t)
	c.waitAllReady(30 * time.Second)
	admin(other, "schedule", "pause", "pulse")
	c.converged(30 * time.Second)
	h, err := history(leader) // the restarted node, caught up
	if err != nil {
		t.Fatal(err)
	}
	for i, f := range h {
		if f.Skipped || f.Result == "" {
			t.Errorf("firing %d: %+v", i, f)
		}
		if i > 0 && f.Tick != h[i-1].Tick+1000 {
			t.Errorf("tick %d at %d after %d: a gap or a duplicate", i, f.Tick, h[i-1].Tick)
		}
	}
	cl := c.dial(context.Background(), "checker", c.urls(leader.k)...)
	st, err := cl.QueueInfo(context.Background(), "rhythm.pulse")
	if err != nil || st.Ready != int64(len(h)) {
		t.Fatalf("%d firings, queue %+v (%v)", len(h), st, err)
	}
	t.Logf("%d ticks fired once each across the leader kill", len(h))
}
