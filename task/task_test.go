package task_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/mcpd/mcpd/route"
	"github.com/mcpd/mcpd/task"
	bolt "go.etcd.io/bbolt"
)

const t0 = int64(1_700_000_000_000)

// world is a state.db with the route and task buckets, and the pushes
// each agent received.
type world struct {
	t      testing.TB
	db     *bolt.DB
	now    int64
	pushes map[string][]*task.Push // by agent (its connection "n1/1/AGENT")
	revoke map[string][]*task.Revoked
}

func newWorld(t testing.TB) *world {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"), 0o600, &bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.Update(func(tx *bolt.Tx) error {
		if err := route.CreateBuckets(tx); err != nil {
			return err
		}
		return task.CreateBuckets(tx)
	}); err != nil {
		t.Fatal(err)
	}
	return &world{t: t, db: db, now: t0, pushes: map[string][]*task.Push{}, revoke: map[string][]*task.Revoked{}}
}

func connOf(agent string) string { return "n1/1/" + agent }

// do runs fn in one command at w.now, with expiries first and routing
// after, as the FSM does; a failed fn rolls the command back.
func (w *world) do(fn func(tx *task.Tx) error) error {
	w.t.Helper()
	var ferr error
	err := w.db.Update(func(btx *bolt.Tx) error {
		tx := task.NewTx(btx, w.now, "n1")
		if err := tx.Expire(); err != nil {
			return err
		}
		if ferr = fn(tx); ferr != nil {
			return ferr
		}
		if err := tx.Finish(); err != nil {
			return err
		}
		for _, e := range tx.Effects {
			switch e := e.(type) {
			case *task.Push:
				a := strings.TrimPrefix(e.Conn, "n1/1/")
				w.pushes[a] = append(w.pushes[a], e)
			case *task.Revoked:
				a := strings.TrimPrefix(e.Conn, "n1/1/")
				w.revoke[a] = append(w.revoke[a], e)
			}
		}
		return nil
	})
	if ferr != nil {
		return ferr
	}
	if err != nil {
		w.t.Fatalf("at +%d: %v", w.now-t0, err)
	}
	return nil
}

func (w *world) must(fn func(tx *task.Tx) error) {
	w.t.Helper()
	if err := w.do(fn); err != nil {
		w.t.Fatalf("at +%d: %v", w.now-t0, err)
	}
}

func (w *world) register(agent string, caps ...route.Cap) {
	w.t.Helper()
	w.must(func(tx *task.Tx) error {
		if _, err := route.Register(tx.Bolt(), w.now, route.RegisterArgs{Agent: agent, Conn: connOf(agent), Caps: caps}); err != nil {
			return err
		}
		a, err := route.Load(tx.Bolt(), agent)
		if err != nil {
			return err
		}
		tx.AgentChanged(a)
		return nil
	})
}

var envSeq int

// env is an envelope with a fresh id.
func env(from, body string) json.RawMessage {
	envSeq++
	return json.RawMessage(fmt.Sprintf(`{"id":"e-%s-%d","from":%q,"ts":1,"body":%s}`, from, envSeq, from, body))
}

func spec(ref, capName string, deps ...string) task.Spec {
	return task.Spec{Ref: ref, Capability: capName, Input: env("origin", `"`+ref+`"`), Deps: deps}
}

func (w *world) submit(from, parent string, specs ...task.Spec) (*task.SubmitResult, error) {
	var res *task.SubmitResult
	err := w.do(func(tx *task.Tx) error {
		var err error
		res, err = tx.Submit(task.SubmitArgs{From: from, Parent: parent, Intent: "find the bug", Tasks: specs, Limits: task.DefaultLimits})
		return err
	})
	return res, err
}

func (w *world) get(id string) *task.Task {
	w.t.Helper()
	var k *task.Task
	if err := w.db.View(func(tx *bolt.Tx) error {
		var err error
		k, err = task.Get(tx, id)
		return err
	}); err != nil || k == nil {
		w.t.Fatalf("get %s: %v %v", id, k, err)
	}
	return k
}

func (w *world) states(ids ...string) string {
	var out []string
	for _, id := range ids {
		out = append(out, w.get(id).State)
	}
	return strings.Join(out, " ")
}

// take pops the oldest push an agent has not handled.
func (w *world) take(agent string) *task.Push {
	w.t.Helper()
	if len(w.pushes[agent]) == 0 {
		w.t.Fatalf("no task pushed to %s", agent)
	}
	p := w.pushes[agent][0]
	w.pushes[agent] = w.pushes[agent][1:]
	return p
}

func (w *world) done(agent string, p *task.Push, output string) {
	w.t.Helper()
	w.must(func(tx *task.Tx) error {
		return tx.Done(task.SettleArgs{Task: p.Task.ID, Attempt: p.Task.Attempt, Agent: agent, Output: json.RawMessage(output), MaxOutput: 1 << 20})
	})
}

func (w *world) fail(agent string, p *task.Push, why string, retry bool) {
	w.t.Helper()
	w.must(func(tx *task.Tx) error {
		return tx.Fail(task.SettleArgs{Task: p.Task.ID, Attempt: p.Task.Attempt, Agent: agent, Error: why, Retry: retry})
	})
}

func (w *world) agent(name string) *route.Agent {
	w.t.Helper()
	var a *route.Agent
	if err := w.db.View(func(tx *bolt.Tx) error {
		var err error
		a, err = route.Load(tx, name)
		return err
	}); err != nil {
		w.t.Fatal(err)
	}
	return a
}

func one(n int) route.Cap { return route.Cap{Name: "work", MaxInflight: n} }

// A chain a → b → c runs in order; each gets its dependency's output.
func Test_Graph_Chain(t *testing.T) {
	w := newWorld(t)
	w.register("x", one(10))
	res, err := w.submit("origin", "", spec("a", "work"), spec("b", "work", "a"), spec("c", "work", "b"))
	if err != nil {
		t.Fatal(err)
	}
	a, b, c := res.IDs["a"], res.IDs["b"], res.IDs["c"]
	if got := w.states(a, b, c); got != "assigned waiting waiting" {
		t.Fatalf("after submit: %s", got)
	}
	w.done("x", w.take("x"), `{"a":1}`)
	pb := w.take("x")
	if pb.Task.ID != b || string(pb.DepsOutput["a"]) != `{"a":1}` || pb.Task.Intent != "find the bug" || pb.Task.Origin != "origin" {
		t.Fatalf("push of b: %+v deps %s", pb.Task, pb.DepsOutput)
	}
	w.done("x", pb, `"b out"`)
	w.done("x", w.take("x"), `3`)
	if got := w.states(a, b, c); got != "succeeded succeeded succeeded" {
		t.Fatalf("end: %s", got)
	}
	if k := w.get(c); string(k.Output) != "3" || len(k.History) != 4 {
		t.Fatalf("c: output %s history %+v", k.Output, k.History)
	}
	if a := w.agent("x"); a.Caps[0].Inflight != 0 || a.Succeeded != 3 {
		t.Fatalf("agent after: %+v", a)
	}
}

// A diamond: d runs once both b and c succeeded, with both outputs.
func Test_Graph_Diamond(t *testing.T) {
	w := newWorld(t)
	w.register("x", one(10))
	res, _ := w.submit("origin", "", spec("a", "work"), spec("b", "work", "a"), spec("c", "work", "a"), spec("d", "work", "b", "c"))
	w.done("x", w.take("x"), `"A"`)
	pb, pc := w.take("x"), w.take("x")
	w.done("x", pb, `"B"`)
	if got := w.get(res.IDs["d"]).State; got != "waiting" {
		t.Fatalf("d after b only: %s", got)
	}
	w.done("x", pc, `"C"`)
	pd := w.take("x")
	if pd.Task.ID != res.IDs["d"] || string(pd.DepsOutput["b"]) != `"B"` || string(pd.DepsOutput["c"]) != `"C"` || len(pd.DepsOutput) != 2 {
		t.Fatalf("d: %s %s", pd.Task.ID, pd.DepsOutput)
	}
}

// Fan-out of 200 under one task, routed over agents by load.
func Test_Graph_FanOut200(t *testing.T) {
	w := newWorld(t)
	w.register("x", one(50))
	w.register("y", one(50))
	specs := []task.Spec{spec("root", "work")}
	for i := range 200 {
		specs = append(specs, spec(fmt.Sprint("leaf", i), "work", "root"))
	}
	res, err := w.submit("origin", "", specs...)
	if err != nil {
		t.Fatal(err)
	}
	w.done("x", w.take("x"), `0`)
	for range 200 {
		for _, a := range []string{"x", "y"} {
			if len(w.pushes[a]) > 0 {
				w.done(a, w.take(a), `1`)
			}
		}
	}
	for i := range 200 {
		if s := w.get(res.IDs[fmt.Sprint("leaf", i)]).State; s != "succeeded" {
			t.Fatalf("leaf%d: %s", i, s)
		}
	}
	if x, y := w.agent("x").Succeeded, w.agent("y").Succeeded; x+y != 201 || x < 80 || y < 80 {
		t.Fatalf("x did %d, y %d", x, y)
	}
}

// A cycle or an unknown dependency is refused, and nothing is stored.
func Test_Graph_Refused(t *testing.T) {
	w := newWorld(t)
	for _, c := range []struct {
		specs []task.Spec
		want  error
	}{
		{[]task.Spec{spec("a", "work", "c"), spec("b", "work", "a"), spec("c", "work", "b")}, task.ErrCycle},
		{[]task.Spec{spec("a", "work", "a")}, task.ErrCycle},
		{[]task.Spec{spec("a", "work", "nope")}, task.ErrBadRequest},
		{[]task.Spec{spec("a", "work"), spec("a", "work")}, task.ErrBadRequest},
		{[]task.Spec{spec("a", "bad cap")}, task.ErrBadRequest},
		{[]task.Spec{{Ref: "a", Capability: "work"}}, task.ErrBadRequest},
	} {
		if _, err := w.submit("origin", "", c.specs...); !errors.Is(err, c.want) {
			t.Errorf("%+v: %v, want %v", c.specs, err, c.want)
		}
	}
	if err := w.db.View(func(tx *bolt.Tx) error {
		for _, b := range task.Buckets {
			if n := tx.Bucket(b).Stats().KeyN; n != 0 {
				t.Errorf("%s: %d entries after refused submissions", b, n)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// A task that fails for good cancels its dependents, transitively, with
// the reason; a sibling that does not depend on it runs on.
func Test_Graph_FailureCascades(t *testing.T) {
	w := newWorld(t)
	w.register("x", one(10))
	res, _ := w.submit("origin", "", spec("a", "work"), spec("b", "work", "a"), spec("c", "work", "b"), spec("s", "work"))
	pa := w.take("x")
	if pa.Task.ID != res.IDs["a"] {
		pa = w.take("x")
	}
	w.fail("x", pa, "firmware is encrypted", false)
	if got := w.states(res.IDs["a"], res.IDs["b"], res.IDs["c"], res.IDs["s"]); got != "failed cancelled cancelled assigned" {
		t.Fatalf("states: %s", got)
	}
	if e := w.get(res.IDs["c"]).Error; !strings.Contains(e, res.IDs["b"]+" cancelled") {
		t.Fatalf("c's reason: %q", e)
	}
	if e := w.get(res.IDs["b"]).Error; !strings.Contains(e, "firmware is encrypted") {
		t.Fatalf("b's reason: %q", e)
	}
}

// A failed attempt with retry comes back after the backoff, not before,
// and then succeeds; a lapsed lease is a failed attempt too, and the
// last one fails the task.
func Test_Task_RetryThenSuccess(t *testing.T) {
	w := newWorld(t)
	w.register("x", one(10))
	res, _ := w.submit("origin", "", task.Spec{Ref: "a", Capability: "work", Input: env("origin", "1"), MaxAttempts: 3, TimeoutMs: 5000})
	id := res.IDs["a"]
	w.fail("x", w.take("x"), "busy", true)
	if k := w.get(id); k.State != "ready" || k.NotBefore != w.now+1000 {
		t.Fatalf("after a failed attempt: %s not before %d", k.State, k.NotBefore-t0)
	}
	w.now += 999
	w.must(func(*task.Tx) error { return nil })
	if len(w.pushes["x"]) != 0 {
		t.Fatal("retried before its backoff")
	}
	w.now++
	w.must(func(*task.Tx) error { return nil })
	p := w.take("x")
	if p.Task.Attempt != 2 {
		t.Fatalf("attempt %d", p.Task.Attempt)
	}
	// The lease lapses: attempt 3 after the second backoff step.
	w.now += 5000
	w.must(func(*task.Tx) error { return nil })
	if len(w.revoke["x"]) != 1 || w.get(id).State != "ready" {
		t.Fatalf("after the lease: revoked %d, %s", len(w.revoke["x"]), w.get(id).State)
	}
	w.now += 5000
	w.must(func(*task.Tx) error { return nil })
	p = w.take("x")
	w.done("x", p, `"ok"`)
	k := w.get(id)
	var events []string
	for _, e := range k.History {
		events = append(events, e.Event)
	}
	if k.State != "succeeded" || k.Attempt != 3 || strings.Join(events, " ") != "submitted ready assigned failed retry assigned timeout retry assigned succeeded" {
		t.Fatalf("end: %s attempt %d history %v", k.State, k.Attempt, events)
	}
	// A stale attempt is refused.
	if err := w.do(func(tx *task.Tx) error {
		return tx.Done(task.SettleArgs{Task: id, Attempt: 2, Agent: "x"})
	}); !errors.Is(err, task.ErrNotFound) {
		t.Fatalf("done of an old attempt: %v", err)
	}
}

// Cancelling a task cancels what was delegated under it and what depends
// on it; cancelling a graph cancels all of it. Only its origin or
// submitter (or an operator) may.
func Test_Task_CancelSubtree(t *testing.T) {
	w := newWorld(t)
	w.register("x", one(10))
	w.register("y", route.Cap{Name: "sub", MaxInflight: 10})
	res, _ := w.submit("origin", "", spec("a", "work"), spec("b", "work", "a"))
	pa := w.take("x")
	sub, err := w.submit("x", pa.Task.ID, spec("s1", "sub"), spec("s2", "sub", "s1"))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.do(func(tx *task.Tx) error {
		_, err := tx.Cancel(task.CancelArgs{Task: res.IDs["a"], Agent: "y"})
		return err
	}); !errors.Is(err, task.ErrForbidden) {
		t.Fatalf("cancel by an agent not in the chain: %v", err)
	}
	var n int
	w.must(func(tx *task.Tx) error {
		var err error
		n, err = tx.Cancel(task.CancelArgs{Task: res.IDs["a"], Agent: "origin", Reason: "wrong target"})
		return err
	})
	// The count is of every task it ended.
	if got := w.states(res.IDs["a"], res.IDs["b"], sub.IDs["s1"], sub.IDs["s2"]); got != "cancelled cancelled cancelled cancelled" || n != 4 {
		t.Fatalf("after cancel (%d ended): %s", n, got)
	}
	if len(w.revoke["x"]) != 1 || len(w.revoke["y"]) != 1 {
		t.Fatalf("revoked: x %d, y %d", len(w.revoke["x"]), len(w.revoke["y"]))
	}
	if a, b := w.agent("x"), w.agent("y"); a.Caps[0].Inflight != 0 || b.Caps[0].Inflight != 0 || a.Failed != 0 {
		t.Fatalf("loads after cancel: %+v %+v", a, b)
	}
	g, _ := w.submit("origin", "", spec("p", "work"), spec("q", "work", "p"))
	w.must(func(tx *task.Tx) error {
		var err error
		n, err = tx.Cancel(task.CancelArgs{Task: g.Root, Operator: "alice"})
		return err
	})
	if got := w.states(g.IDs["p"], g.IDs["q"]); got != "cancelled cancelled" || n != 2 {
		t.Fatalf("after cancelling the graph (%d ended): %s", n, got)
	}
}

// Four equal agents share 400 tasks; an agent with max_inflight 1 never
// holds two; tasks of a capability no agent has wait and are routed when
// one registers.
func Test_Routing(t *testing.T) {
	w := newWorld(t)
	for _, a := range []string{"a1", "a2", "a3", "a4"} {
		w.register(a, one(1000))
	}
	var specs []task.Spec
	for i := range 400 {
		specs = append(specs, spec(fmt.Sprint("t", i), "work"))
	}
	if _, err := w.submit("origin", "", specs...); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"a1", "a2", "a3", "a4"} {
		if n := len(w.pushes[a]); n < 80 || n > 120 {
			t.Errorf("%s got %d of 400", a, n)
		}
	}

	w.register("solo", route.Cap{Name: "narrow", MaxInflight: 1})
	var narrow []task.Spec
	for i := range 5 {
		narrow = append(narrow, spec(fmt.Sprint("n", i), "narrow"))
	}
	if _, err := w.submit("origin", "", narrow...); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if a := w.agent("solo"); a.Caps[0].Inflight != 1 || len(w.pushes["solo"]) != 1 {
			t.Fatalf("step %d: solo holds %d, %d pushes waiting", i, a.Caps[0].Inflight, len(w.pushes["solo"]))
		}
		w.done("solo", w.take("solo"), `1`)
	}

	res, _ := w.submit("origin", "", spec("late", "rare"))
	w.now += 60_000
	w.must(func(*task.Tx) error { return nil })
	if s := w.get(res.IDs["late"]).State; s != "ready" {
		t.Fatalf("with no agent for it: %s", s)
	}
	w.register("rare-agent", route.Cap{Name: "rare", MaxInflight: 1})
	if p := w.take("rare-agent"); p.Task.ID != res.IDs["late"] {
		t.Fatalf("pushed %s", p.Task.ID)
	}
}

// A task with approval, or of a sensitive capability, waits held until
// an operator approves it; a denial cancels it and its dependents.
func Test_Task_Approval(t *testing.T) {
	w := newWorld(t)
	w.register("x", one(10), route.Cap{Name: "wire.transfer", MaxInflight: 1})
	a := spec("a", "work")
	a.Approval = true
	res, _ := w.submit("origin", "", a, spec("b", "work", "a"))
	if s := w.get(res.IDs["a"]).State; s != "held" || len(w.pushes["x"]) != 0 {
		t.Fatalf("approval task: %s, %d pushes", s, len(w.pushes["x"]))
	}
	if err := w.do(func(tx *task.Tx) error {
		return tx.Decide(task.DecideArgs{Task: res.IDs["b"], Operator: "alice", Approve: true})
	}); !errors.Is(err, task.ErrConflict) {
		t.Fatalf("approving a waiting task: %v", err)
	}
	w.must(func(tx *task.Tx) error {
		return tx.Decide(task.DecideArgs{Task: res.IDs["a"], Operator: "alice", Approve: true, Reason: "checked"})
	})
	if p := w.take("x"); p.Task.ID != res.IDs["a"] {
		t.Fatalf("pushed %s", p.Task.ID)
	}
	w.must(func(tx *task.Tx) error { return tx.SetSensitive("wire.transfer", "alice", true) })
	s, _ := w.submit("origin", "", spec("pay", "wire.transfer"), spec("after", "work", "pay"))
	if st := w.get(s.IDs["pay"]).State; st != "held" {
		t.Fatalf("sensitive capability: %s", st)
	}
	w.must(func(tx *task.Tx) error {
		return tx.Decide(task.DecideArgs{Task: s.IDs["pay"], Operator: "bob", Reason: "not this vendor"})
	})
	if got := w.states(s.IDs["pay"], s.IDs["after"]); got != "cancelled cancelled" {
		t.Fatalf("after a denial: %s", got)
	}
	k := w.get(s.IDs["pay"])
	if k.Error != "denied by operator bob: not this vendor" || k.History[len(k.History)-2].Event != "denied" {
		t.Fatalf("denied task: %q %+v", k.Error, k.History)
	}
}

// Delegation: the agent working on T submits under it; the sub-tasks
// inherit T's origin and intent, extend its chain and keep every hop's
// envelope. Loops, depth and fan-out beyond the budget are refused, and
// only T's holder delegates under T.
func Test_Task_Delegation(t *testing.T) {
	w := newWorld(t)
	w.register("editor", route.Cap{Name: "edit", MaxInflight: 5})
	w.register("reviewer", route.Cap{Name: "review", MaxInflight: 5})
	w.register("origin", route.Cap{Name: "research", MaxInflight: 5})
	res, _ := w.submit("origin", "", spec("draft", "edit"))
	pt := w.take("editor")
	if _, err := w.submit("reviewer", pt.Task.ID, spec("r", "review")); !errors.Is(err, task.ErrForbidden) {
		t.Fatalf("delegating under a task one does not hold: %v", err)
	}
	sub, err := w.submit("editor", pt.Task.ID, spec("r", "review"))
	if err != nil {
		t.Fatal(err)
	}
	pr := w.take("reviewer")
	k := pr.Task
	if k.Origin != "origin" || k.Intent != "find the bug" || !slices.Equal(k.Chain, []string{"origin", "editor"}) || len(k.Hops) != 2 ||
		k.Hops[0].Task != res.IDs["draft"] || k.Hops[1].Agent != "editor" || k.Parent != pt.Task.ID ||
		!slices.Equal(k.Lineage, []string{res.Root, pt.Task.ID, sub.Root}) {
		t.Fatalf("sub-task provenance: %+v", k)
	}
	// reviewer delegates research, which goes to origin; origin
	// delegating again under it would put it twice in the chain.
	if _, err := w.submit("reviewer", k.ID, spec("x", "research")); err != nil {
		t.Fatal(err)
	}
	back := w.take("origin")
	if !slices.Equal(back.Task.Chain, []string{"origin", "editor", "reviewer"}) {
		t.Fatalf("chain %v", back.Task.Chain)
	}
	if _, err := w.submit("origin", back.Task.ID, spec("y", "edit")); !errors.Is(err, task.ErrForbidden) || !strings.Contains(err.Error(), "loop") {
		t.Fatalf("a loop: %v", err)
	}
	err = w.do(func(tx *task.Tx) error {
		_, err := tx.Submit(task.SubmitArgs{From: "reviewer", Parent: k.ID, Tasks: []task.Spec{spec("x", "edit")}, Limits: task.Limits{MaxDepth: 2, AllowRepeat: true}})
		return err
	})
	if !errors.Is(err, task.ErrForbidden) || !strings.Contains(err.Error(), "depth") {
		t.Fatalf("beyond the depth budget: %v", err)
	}
	err = w.do(func(tx *task.Tx) error {
		_, err := tx.Submit(task.SubmitArgs{From: "editor", Parent: pt.Task.ID, Tasks: []task.Spec{spec("x", "review"), spec("y", "review")}, Limits: task.Limits{MaxFanout: 2}})
		return err
	})
	if !errors.Is(err, task.ErrForbidden) || !strings.Contains(err.Error(), "fan-out") {
		t.Fatalf("beyond the fan-out budget: %v", err)
	}
}

// The same commands at the same times leave two stores byte-identical.
func Test_Task_Deterministic(t *testing.T) {
	var dumps [2][]byte
	for i := range dumps {
		envSeq = 0
		w := newWorld(t)
		w.register("x", one(3))
		w.register("y", one(2))
		res, _ := w.submit("origin", "", spec("a", "work"), spec("b", "work", "a"), spec("c", "work", "a"), spec("d", "work", "b", "c"), spec("e", "work"))
		for step := 0; step < 30; step++ {
			w.now += 700
			for _, a := range []string{"x", "y"} {
				if len(w.pushes[a]) > 0 {
					p := w.take(a)
					if step%3 == 0 {
						w.fail(a, p, "flaky", true)
					} else {
						w.done(a, p, `1`)
					}
				}
			}
		}
		_ = res
		var buf bytes.Buffer
		if err := w.db.View(func(tx *bolt.Tx) error {
			for _, b := range append(slices.Clone(task.Buckets), route.Buckets...) {
				if err := tx.Bucket(b).ForEach(func(k, v []byte) error {
					buf.Write(k)
					buf.Write(v)
					return nil
				}); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		dumps[i] = buf.Bytes()
	}
	if !bytes.Equal(dumps[0], dumps[1]) {
		i := 0
		for i < len(dumps[0]) && i < len(dumps[1]) && dumps[0][i] == dumps[1][i] {
			i++
		}
		t.Fatalf("two runs of the same commands differ at byte %d: %q vs %q", i, dumps[0][max(0, i-40):min(len(dumps[0]), i+40)], dumps[1][max(0, i-40):min(len(dumps[1]), i+40)])
	}
}

// A submission sent again (a retry after a lost reply) gets the first
// one's ids and creates nothing; the same envelope id with other content
// is a conflict.
func Test_Task_SubmitRetry(t *testing.T) {
	w := newWorld(t)
	args := task.SubmitArgs{From: "origin", Tasks: []task.Spec{spec("a", "work"), spec("b", "work", "a")}, Limits: task.DefaultLimits}
	var first, again *task.SubmitResult
	w.must(func(tx *task.Tx) error { var err error; first, err = tx.Submit(args); return err })
	w.must(func(tx *task.Tx) error { var err error; again, err = tx.Submit(args); return err })
	if fmt.Sprint(first) != fmt.Sprint(again) {
		t.Fatalf("retry answered %v, first %v", again, first)
	}
	args.Intent = "something else"
	if err := w.do(func(tx *task.Tx) error { _, err := tx.Submit(args); return err }); !errors.Is(err, task.ErrConflict) {
		t.Fatalf("another submission under the same envelope id: %v", err)
	}
	if res, _ := w.submit("origin", "", spec("c", "work")); res.IDs["c"] != "t3" {
		t.Fatalf("the retry created tasks: next id %s", res.IDs["c"])
	}
}

// A task pushed to a connection that closes goes again, same attempt, to
// the agent's other registered connection, or to its new one when it
// comes back; revocations follow it.
func Test_Task_Rehome(t *testing.T) {
	w := newWorld(t)
	reg := func(conn string) {
		w.must(func(tx *task.Tx) error {
			if _, err := route.Register(tx.Bolt(), w.now, route.RegisterArgs{Agent: "x", Conn: conn, Caps: []route.Cap{one(5)}}); err != nil {
				return err
			}
			a, _ := route.Load(tx.Bolt(), "x")
			tx.AgentChanged(a)
			return tx.Rehome(a)
		})
	}
	closeConn := func(conn string) {
		w.must(func(tx *task.Tx) error {
			a, err := route.ConnClosed(tx.Bolt(), w.now, conn)
			if err != nil || a == nil {
				return fmt.Errorf("close %s: %v", conn, err)
			}
			return tx.Rehome(a)
		})
	}
	pushes := func() map[string]int { // the harness files pushes by the connection's last part
		out := map[string]int{}
		for _, ps := range w.pushes {
			for _, p := range ps {
				out[p.Conn]++
			}
		}
		return out
	}
	reg("n1/1/x")
	reg("n1/1/y")
	res, _ := w.submit("origin", "", spec("a", "work"))
	if got := pushes(); got["n1/1/x"] != 1 || len(got) != 1 {
		t.Fatalf("first push: %v", got)
	}
	closeConn("n1/1/x")
	if got := pushes(); got["n1/1/y"] != 1 || w.pushes["y"][0].Task.Attempt != 1 {
		t.Fatalf("after the connection closed: %v", got)
	}
	closeConn("n1/1/y")
	reg("n1/1/z")
	if got := pushes(); got["n1/1/z"] != 1 {
		t.Fatalf("after the agent came back: %v", got)
	}
	w.must(func(tx *task.Tx) error {
		_, err := tx.Cancel(task.CancelArgs{Task: res.IDs["a"], Agent: "origin"})
		return err
	})
	if r := w.revoke["z"]; len(r) != 1 || r[0].Conn != "n1/1/z" {
		t.Fatalf("revocation: %+v", r)
	}
}

// The state machine as a table: from each state, each event, the state
// that follows or the error; an event that does not apply changes
// nothing.
func Test_Task_StateTable(t *testing.T) {
	// Each start puts task "a" (and a dependent "b" where it matters) in
	// a state, with agent x holding it when assigned.
	starts := map[string]func(w *world) (a, b string){
		"waiting": func(w *world) (string, string) {
			res, _ := w.submit("origin", "", spec("dep", "work"), spec("a", "work", "dep"))
			return res.IDs["a"], ""
		},
		"held": func(w *world) (string, string) {
			s := spec("a", "work")
			s.Approval = true
			res, _ := w.submit("origin", "", s, spec("b", "work", "a"))
			return res.IDs["a"], res.IDs["b"]
		},
		"ready": func(w *world) (string, string) {
			res, _ := w.submit("origin", "", spec("a", "nobody"), spec("b", "work", "a"))
			return res.IDs["a"], res.IDs["b"]
		},
		"assigned": func(w *world) (string, string) {
			res, _ := w.submit("origin", "", spec("a", "work"), spec("b", "work", "a"))
			return res.IDs["a"], res.IDs["b"]
		},
		"succeeded": func(w *world) (string, string) {
			res, _ := w.submit("origin", "", spec("a", "work"))
			w.done("x", w.take("x"), "1")
			return res.IDs["a"], ""
		},
		"failed": func(w *world) (string, string) {
			res, _ := w.submit("origin", "", spec("a", "work"))
			w.fail("x", w.take("x"), "no", false)
			return res.IDs["a"], ""
		},
	}
	events := map[string]func(tx *task.Tx, id string) error{
		"done": func(tx *task.Tx, id string) error {
			return tx.Done(task.SettleArgs{Task: id, Attempt: 1, Agent: "x", Output: json.RawMessage("1")})
		},
		"retry": func(tx *task.Tx, id string) error {
			return tx.Fail(task.SettleArgs{Task: id, Attempt: 1, Agent: "x", Error: "e", Retry: true})
		},
		"fail": func(tx *task.Tx, id string) error {
			return tx.Fail(task.SettleArgs{Task: id, Attempt: 1, Agent: "x", Error: "e"})
		},
		"cancel": func(tx *task.Tx, id string) error {
			_, err := tx.Cancel(task.CancelArgs{Task: id, Agent: "origin"})
			return err
		},
		"approve": func(tx *task.Tx, id string) error {
			return tx.Decide(task.DecideArgs{Task: id, Operator: "op", Approve: true})
		},
		"deny": func(tx *task.Tx, id string) error { return tx.Decide(task.DecideArgs{Task: id, Operator: "op"}) },
	}
	for _, c := range []struct {
		from, event, to, dependent string
		err                        error
	}{
		{"waiting", "done", "waiting", "", task.ErrNotFound},
		{"waiting", "approve", "waiting", "", task.ErrConflict},
		{"waiting", "cancel", "cancelled", "", nil},
		{"held", "approve", "assigned", "waiting", nil},
		{"held", "deny", "cancelled", "cancelled", nil},
		{"held", "done", "held", "waiting", task.ErrNotFound},
		{"held", "cancel", "cancelled", "cancelled", nil},
		{"ready", "done", "ready", "waiting", task.ErrNotFound},
		{"ready", "deny", "ready", "waiting", task.ErrConflict},
		{"ready", "cancel", "cancelled", "cancelled", nil},
		{"assigned", "done", "succeeded", "assigned", nil},
		{"assigned", "retry", "ready", "waiting", nil},
		{"assigned", "fail", "failed", "cancelled", nil},
		{"assigned", "cancel", "cancelled", "cancelled", nil},
		{"assigned", "approve", "assigned", "waiting", task.ErrConflict},
		{"succeeded", "done", "succeeded", "", task.ErrNotFound},
		{"succeeded", "cancel", "succeeded", "", nil},
		{"failed", "retry", "failed", "", task.ErrNotFound},
		{"failed", "approve", "failed", "", task.ErrConflict},
	} {
		t.Run(c.from+"/"+c.event, func(t *testing.T) {
			w := newWorld(t)
			w.register("x", one(5))
			a, b := starts[c.from](w)
			if got := w.get(a).State; got != c.from {
				t.Fatalf("start: %s, want %s", got, c.from)
			}
			err := w.do(func(tx *task.Tx) error { return events[c.event](tx, a) })
			if !errors.Is(err, c.err) || (c.err == nil) != (err == nil) {
				t.Fatalf("%s: %v, want %v", c.event, err, c.err)
			}
			if got := w.get(a).State; got != c.to {
				t.Fatalf("after %s: %s, want %s", c.event, got, c.to)
			}
			if b != "" && c.dependent != "" {
				if got := w.get(b).State; got != c.dependent {
					t.Fatalf("its dependent: %s, want %s", got, c.dependent)
				}
			}
		})
	}
}
