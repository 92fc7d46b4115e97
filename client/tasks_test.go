package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mcpd/mcpd/client"
	"github.com/mcpd/mcpd/internal/testcluster"
	"github.com/mcpd/mcpd/route"
	bolt "go.etcd.io/bbolt"
)

// Delegation through the client against a real cluster: a worker
// registered with Work, an originator that submits, watches, reads and
// cancels.

func longCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// work runs c.Work in the background; the returned function stops it and
// returns Work's error.
func work(t *testing.T, c *client.Client, caps []client.Capability, h client.TaskHandler, opts ...client.WorkOption) func() error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Work(ctx, caps, h, opts...) }()
	var once sync.Once
	var err error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(20 * time.Second):
				err = errors.New("Work did not return")
			}
		})
		return err
	}
	t.Cleanup(func() { stop() })
	return stop
}

// waitOnline waits until agent is online with a capability of that name.
func waitOnline(t *testing.T, c *client.Client, agent, capName string) client.AgentInfo {
	t.Helper()
	var got client.AgentInfo
	testcluster.WaitFor(t, 10*time.Second, func() bool {
		list, err := c.Agents(longCtx(t))
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range list {
			if a.Name == agent && a.Online && slices.ContainsFunc(a.Capabilities, func(k client.Capability) bool { return k.Name == capName && k.MaxInflight > 0 }) {
				got = a
				return true
			}
		}
		return false
	})
	return got
}

// untilFinal reads a watch until every id has an end state, and returns
// the last state of each task seen.
func untilFinal(t *testing.T, ctx context.Context, w *client.TaskWatch, ids ...string) map[string]*client.Task {
	t.Helper()
	last := map[string]*client.Task{}
	for {
		all := true
		for _, id := range ids {
			if last[id] == nil || !client.TaskFinal(last[id].State) {
				all = false
			}
		}
		if all {
			return last
		}
		u, err := w.Next(ctx)
		if err != nil {
			t.Fatalf("watch %s: %v (seen %v)", w.ID, err, states(last))
		}
		last[u.Task.ID] = u.Task
	}
}

func states(m map[string]*client.Task) map[string]string {
	out := map[string]string{}
	for id, k := range m {
		out[id] = k.State
	}
	return out
}

func TestTasksWorkerRunsAGraph(t *testing.T) {
	c := testcluster.Start(t, 1, testcluster.Options{})
	worker, origin := c.Dial("worker"), c.Dial("origin")
	ctx := longCtx(t)

	var mu sync.Mutex
	seen := map[string]*client.TaskAssignment{}
	stop := work(t, worker, []client.Capability{{Name: "math.double", MaxInflight: 2}}, func(ctx context.Context, a *client.TaskAssignment) (any, error) {
		mu.Lock()
		seen[a.Ref] = a
		mu.Unlock()
		var n int
		if err := json.Unmarshal(a.Body(), &n); err != nil {
			return nil, err
		}
		for _, o := range a.DepsOutput {
			var m int
			_ = json.Unmarshal(o, &m)
			n += m
		}
		return n * 2, nil
	}, client.WithMeta(map[string]string{"model": "m1"}))
	info := waitOnline(t, origin, "worker", "math.double")
	if string(info.Meta) != `{"model":"m1"}` || info.Capabilities[0].MaxInflight != 2 || len(info.Nodes) != 1 {
		t.Fatalf("agents: %+v", info)
	}

	ids, root, err := origin.SubmitTasks(ctx, client.SubmitRequest{Intent: "double twice", Tasks: []client.TaskSpec{
		{Ref: "a", Capability: "math.double", Input: 3},
		{Ref: "b", Capability: "math.double", Input: 1, Deps: []string{"a"}, MaxAttempts: 2, TimeoutMs: 5000},
	}})
	if err != nil || ids["a"] == "" || ids["b"] == "" || root == "" {
		t.Fatalf("submit: %v %v %q", err, ids, root)
	}
	w, err := origin.WatchTasks(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	last := untilFinal(t, ctx, w, ids["a"], ids["b"])
	if last[ids["a"]].State != client.TaskSucceeded || string(last[ids["b"]].Output) != "14" {
		t.Fatalf("watched: a %+v, b %+v", last[ids["a"]], last[ids["b"]])
	}

	g, err := origin.GetTask(ctx, ids["b"])
	if err != nil {
		t.Fatal(err)
	}
	k := g.Task
	if k == nil || k.State != client.TaskSucceeded || string(k.Output) != "14" || k.Intent != "double twice" ||
		k.Origin != "origin" || k.MaxAttempts != 2 || k.TimeoutMs != 5000 || len(k.Hops) != 1 {
		t.Fatalf("task.get: %+v", k)
	}
	if !slices.ContainsFunc(k.History, func(e client.TaskEvent) bool { return e.Event == "assigned" && e.Agent == "worker" && e.Attempt == 1 }) {
		t.Fatalf("history without the assignment: %+v", k.History)
	}
	env, err := client.ParseEnvelope(k.Input)
	if err != nil || env.From != "origin" || env.Intent != "double twice" || string(env.Body) != "1" {
		t.Fatalf("the input envelope: %s (%v)", k.Input, err)
	}
	graph, err := origin.GetTask(ctx, root)
	if err != nil || graph.Graph != root || len(graph.Tasks) != 2 || graph.Task != nil {
		t.Fatalf("task.get of the graph: %+v %v", graph, err)
	}
	mu.Lock()
	b := seen["b"]
	mu.Unlock()
	if b == nil || string(b.DepsOutput["a"]) != "6" || b.Origin != "origin" || !slices.Equal(b.Chain, []string{"origin"}) || b.Attempt != 1 || b.LeaseUntil == 0 {
		t.Fatalf("the assignment of b: %+v", b)
	}

	// Stopping the worker withdraws its capabilities.
	if err := stop(); err != nil {
		t.Fatalf("Work: %v", err)
	}
	list, err := origin.Agents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range list {
		if a.Name == "worker" && (len(a.Capabilities) != 0 || a.Succeeded != 2 || a.RecentSucceeded != 2) {
			t.Fatalf("the worker after Work returned: %+v", a)
		}
	}

	// Refusals.
	if _, _, err := origin.SubmitTasks(ctx, client.SubmitRequest{Tasks: []client.TaskSpec{
		{Ref: "x", Capability: "c", Input: 1, Deps: []string{"y"}}, {Ref: "y", Capability: "c", Input: 2, Deps: []string{"x"}},
	}}); !client.IsCode(err, "cycle") {
		t.Fatalf("a cycle: %v", err)
	}
	if _, err := origin.GetTask(ctx, "t-none"); !client.IsCode(err, "not_found") {
		t.Fatalf("an unknown task: %v", err)
	}
	if err := origin.TaskDone(ctx, ids["a"], 1, "again"); !client.IsCode(err, "not_found") {
		t.Fatalf("settling a task the agent does not hold: %v", err)
	}
}

// Retry(err) retries, a plain error fails for good and cancels the
// dependents, a cancel reaches the running handler as its context's
// cause, and a panic fails the attempt.
func TestTasksWorkerFailuresAndRevocation(t *testing.T) {
	c := testcluster.Start(t, 1, testcluster.Options{})
	worker, origin := c.Dial("worker"), c.Dial("origin")
	ctx := longCtx(t)
	running := make(chan string, 8)
	causes := make(chan error, 1)
	work(t, worker, []client.Capability{{Name: "flaky"}, {Name: "fatal"}, {Name: "slow"}, {Name: "panics"}}, func(ctx context.Context, a *client.TaskAssignment) (any, error) {
		switch a.Capability {
		case "flaky":
			if a.Attempt == 1 {
				return nil, client.Retry(errors.New("busy"))
			}
			return "second time lucky", nil
		case "fatal":
			return nil, errors.New("bad input")
		case "slow":
			running <- a.ID
			<-ctx.Done()
			causes <- context.Cause(ctx)
			return nil, ctx.Err()
		}
		panic("boom")
	})
	waitOnline(t, origin, "worker", "panics")

	ids, root, err := origin.SubmitTasks(ctx, client.SubmitRequest{Tasks: []client.TaskSpec{
		{Ref: "flaky", Capability: "flaky", Input: nil},
		{Ref: "fatal", Capability: "fatal", Input: nil},
		{Ref: "after", Capability: "flaky", Input: nil, Deps: []string{"fatal"}},
		{Ref: "panics", Capability: "panics", Input: nil},
	}})
	if err != nil {
		t.Fatal(err)
	}
	w, err := origin.WatchTasks(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	last := untilFinal(t, ctx, w, ids["flaky"], ids["fatal"], ids["after"], ids["panics"])
	if k := last[ids["flaky"]]; k.State != client.TaskSucceeded || k.Attempt != 2 || string(k.Output) != `"second time lucky"` {
		t.Fatalf("flaky: %+v", k)
	}
	if k := last[ids["fatal"]]; k.State != client.TaskFailed || k.Error != "bad input" {
		t.Fatalf("fatal: %+v", k)
	}
	if k := last[ids["after"]]; k.State != client.TaskCancelled {
		t.Fatalf("the dependent of fatal: %+v", k)
	}
	if k := last[ids["panics"]]; k.State != client.TaskFailed || !strings.Contains(k.Error, "boom") {
		t.Fatalf("panics: %+v", k)
	}

	sids, _, err := origin.SubmitTasks(ctx, client.SubmitRequest{Tasks: []client.TaskSpec{{Ref: "s", Capability: "slow", Input: "x"}}})
	if err != nil {
		t.Fatal(err)
	}
	if id := <-running; id != sids["s"] {
		t.Fatalf("running %s, want %s", id, sids["s"])
	}
	if n, err := origin.CancelTask(ctx, sids["s"], "changed my mind"); err != nil || n != 1 {
		t.Fatalf("cancel: %d %v", n, err)
	}
	var rev *client.RevokedError
	if cause := <-causes; !errors.As(cause, &rev) || rev.Task != sids["s"] || !strings.Contains(rev.Reason, "changed my mind") {
		t.Fatalf("the handler's context ended with %v", cause)
	}
	g, err := origin.GetTask(ctx, sids["s"])
	if err != nil || g.Task.State != client.TaskCancelled {
		t.Fatalf("the cancelled task: %+v %v", g, err)
	}
	// Another agent may not cancel it.
	if _, err := worker.CancelTask(ctx, ids["flaky"], ""); !client.IsCode(err, "forbidden") {
		t.Fatalf("cancel by a stranger: %v", err)
	}
}

// proxy forwards TCP connections to a node and can cut them all, as a
// network failure would.
type proxy struct {
	ln     net.Listener
	URL    string
	mu     sync.Mutex
	conns  []net.Conn
	paused bool // new connections are closed at once
}

func newProxy(t *testing.T, nodeURL string) *proxy {
	t.Helper()
	target := strings.TrimSuffix(strings.TrimPrefix(nodeURL, "wss://"), "/v1")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, URL: "wss://" + ln.Addr().String() + "/v1"}
	go func() {
		for {
			a, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			paused := p.paused
			p.mu.Unlock()
			if paused {
				a.Close()
				continue
			}
			b, err := net.Dial("tcp", target)
			if err != nil {
				a.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, a, b)
			p.mu.Unlock()
			pipe := func(dst, src net.Conn) {
				_, _ = io.Copy(dst, src)
				dst.Close()
				src.Close()
			}
			go pipe(a, b)
			go pipe(b, a)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.cut()
	})
	return p
}

// pause refuses new connections until resume.
func (p *proxy) pause(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.paused = on
}

// cut closes every forwarded connection.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// registeredConns lists an agent's open registered connections as the
// node's state holds them.
func registeredConns(t *testing.T, nd *testcluster.Node, agent string) []string {
	t.Helper()
	var conns []string
	if err := nd.Node.Read(func(tx *bolt.Tx) error {
		a, err := route.Load(tx, agent)
		if a != nil {
			conns = a.Conns
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return conns
}

// After the worker's connection drops, the client registers again on
// the new one: the task it was running is settled there, and the next
// task reaches it. A watch whose connection was down while the task
// ended reads the end when it is re-opened.
func TestTasksWorkerSurvivesReconnect(t *testing.T) {
	c := testcluster.Start(t, 1, testcluster.Options{})
	nd := c.Nodes[0]
	pw, pv := newProxy(t, nd.URL), newProxy(t, nd.URL)
	worker, watcher, origin := c.Dial("worker", pw.URL), c.Dial("watcher", pv.URL), c.Dial("origin")
	ctx := longCtx(t)

	started := make(chan string, 4)
	release := make(chan struct{})
	work(t, worker, []client.Capability{{Name: "job"}}, func(ctx context.Context, a *client.TaskAssignment) (any, error) {
		started <- a.Ref
		if a.Ref == "first" {
			select {
			case <-release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		return a.Ref + " done", nil
	})
	waitOnline(t, origin, "worker", "job")
	before := registeredConns(t, nd, "worker")
	if len(before) != 1 {
		t.Fatalf("registered connections before the cut: %v", before)
	}

	ids, root, err := origin.SubmitTasks(ctx, client.SubmitRequest{Tasks: []client.TaskSpec{{Ref: "first", Capability: "job", Input: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	w, err := watcher.WatchTasks(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	if ref := <-started; ref != "first" {
		t.Fatalf("started %q", ref)
	}

	pv.pause(true)
	pv.cut()
	pw.cut()
	testcluster.WaitFor(t, 15*time.Second, func() bool {
		now := registeredConns(t, nd, "worker")
		return worker.Reconnects() >= 1 && len(now) == 1 && now[0] != before[0]
	})
	close(release)
	testcluster.WaitFor(t, 10*time.Second, func() bool {
		g, err := origin.GetTask(ctx, ids["first"])
		return err == nil && g.Task.State == client.TaskSucceeded
	})
	g, err := origin.GetTask(ctx, ids["first"])
	if err != nil || string(g.Task.Output) != `"first done"` || g.Task.Attempt != 1 {
		t.Fatalf("first: %+v %v", g, err)
	}

	// The watcher was away when the task ended: the re-opened watch
	// reads it.
	pv.pause(false)
	var end *client.TaskUpdate
	for end == nil || !client.TaskFinal(end.Task.State) {
		if end, err = w.Next(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if !end.Snapshot || end.Task.ID != ids["first"] || end.Task.State != client.TaskSucceeded || watcher.Reconnects() < 1 {
		t.Fatalf("the watch's end: %+v %+v", end, end.Task)
	}

	ids2, _, err := origin.SubmitTasks(ctx, client.SubmitRequest{Tasks: []client.TaskSpec{{Ref: "second", Capability: "job", Input: 2}}})
	if err != nil {
		t.Fatal(err)
	}
	if ref := <-started; ref != "second" {
		t.Fatalf("started %q", ref)
	}
	testcluster.WaitFor(t, 10*time.Second, func() bool {
		g, err := origin.GetTask(ctx, ids2["second"])
		return err == nil && g.Task.State == client.TaskSucceeded && string(g.Task.Output) == `"second done"`
	})
}

// Register and Tasks without Work, and a sub-task delegated under a task:
// it inherits the intent and extends the chain.
func TestTasksRegisterAndDelegate(t *testing.T) {
	c := testcluster.Start(t, 1, testcluster.Options{})
	editor, checker, origin := c.Dial("editor"), c.Dial("checker"), c.Dial("origin")
	ctx := longCtx(t)

	work(t, editor, []client.Capability{{Name: "edit"}}, func(ctx context.Context, a *client.TaskAssignment) (any, error) {
		ids, _, err := a.Delegate(ctx, client.SubmitRequest{Tasks: []client.TaskSpec{{Ref: "fc", Capability: "factcheck", Input: "tides are lunar"}}})
		if err != nil {
			return nil, err
		}
		return ids["fc"], nil
	})
	if err := checker.Register(ctx, []client.Capability{{Name: "factcheck", MaxInflight: 3}}, map[string]int{"v": 2}); err != nil {
		t.Fatal(err)
	}
	info := waitOnline(t, origin, "checker", "factcheck")
	if string(info.Meta) != `{"v":2}` || info.Capabilities[0].MaxInflight != 3 {
		t.Fatalf("the checker: %+v", info)
	}
	waitOnline(t, origin, "editor", "edit")

	ids, _, err := origin.SubmitTasks(ctx, client.SubmitRequest{Intent: "a correct article", Tasks: []client.TaskSpec{{Ref: "e", Capability: "edit", Input: "draft it"}}})
	if err != nil {
		t.Fatal(err)
	}
	var a *client.TaskAssignment
	select {
	case a = <-checker.Tasks():
	case <-ctx.Done():
		t.Fatal("no task reached the checker")
	}
	env, err := a.Envelope()
	if err != nil || env.From != "editor" || string(a.Body()) != `"tides are lunar"` || a.Parent != ids["e"] ||
		a.Intent != "a correct article" || a.Origin != "origin" || !slices.Equal(a.Chain, []string{"origin", "editor"}) {
		t.Fatalf("the delegated task: %+v (%v)", a, err)
	}
	if err := a.Done(ctx, json.RawMessage(`{"verdict":true}`)); err != nil {
		t.Fatal(err)
	}
	if a.Context().Err() == nil {
		t.Fatal("the assignment's context is still live after Done")
	}
	// Settling again: the same outcome is taken as done (a retry after a
	// lost reply looks the same), another is refused.
	if err := a.Done(ctx, 1); err != nil {
		t.Fatalf("a second Done: %v", err)
	}
	if err := a.Fail(ctx, "too late", false); !client.IsCode(err, "not_found") {
		t.Fatalf("a Fail after Done: %v", err)
	}
	g, err := origin.GetTask(ctx, ids["e"])
	if err != nil || g.Task.State != client.TaskSucceeded || string(g.Task.Output) != `"`+a.ID+`"` {
		t.Fatalf("the editor's task: %+v %v", g, err)
	}
	fc, err := checker.GetTask(ctx, a.ID)
	if err != nil || fc.Task.State != client.TaskSucceeded || len(fc.Task.Hops) != 2 || fc.Task.Hops[1].Agent != "editor" {
		t.Fatalf("the fact check: %+v %v", fc, err)
	}
	if err := checker.Unregister(ctx); err != nil {
		t.Fatal(err)
	}
	testcluster.WaitFor(t, 10*time.Second, func() bool {
		list, err := origin.Agents(ctx)
		return err == nil && slices.ContainsFunc(list, func(x client.AgentInfo) bool { return x.Name == "checker" && len(x.Capabilities) == 0 })
	})
}
