package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mcpd/mcpd/client"
	"github.com/mcpd/mcpd/cluster"
	"github.com/mcpd/mcpd/internal/testcluster"
	"github.com/mcpd/mcpd/transport"
)

// cliNode is a one-node dev cluster with its admin API on a unix
// socket, as "mcpd serve --dev" has, for the delegation commands.
type cliNode struct {
	t    *testing.T
	c    *testcluster.Cluster
	ca   string
	sock string
}

func startCLINode(t *testing.T) *cliNode {
	t.Helper()
	// The node checks raft.db in this process, not in a child (check.go).
	cluster.RaftDBChecker = cluster.CheckRaftDB
	c := testcluster.Start(t, 1, testcluster.Options{})
	sock := filepath.Join(t.TempDir(), "admin.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: transport.NewAdmin(c.Nodes[0].Node, nil, slog.New(slog.DiscardHandler)).LocalHandler()}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return &cliNode{t: t, c: c, ca: filepath.Join(c.TLSDir, "ca.pem"), sock: sock}
}

// asAgent adds the connection flags of a dev agent.
func (n *cliNode) asAgent(agent string, args ...string) []string {
	return append(args, "--server", n.c.Nodes[0].URL, "--ca", n.ca, "--agent", agent)
}

// asOperator adds the admin socket.
func (n *cliNode) asOperator(args ...string) []string {
	return append(args, "--admin-socket", n.sock)
}

// run runs a command and returns what it printed.
func run(t *testing.T, cmd func([]string, io.Writer) error, args []string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	err := cmd(args, &out)
	return out.String(), err
}

func mustRun(t *testing.T, cmd func([]string, io.Writer) error, args []string) string {
	t.Helper()
	out, err := run(t, cmd, args)
	if err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	return out
}

// writeJSON writes a file in the test's directory.
func writeJSON(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// submitted reads the ids "task submit" printed: root first.
func submitted(t *testing.T, out string) map[string]string {
	t.Helper()
	ids := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			t.Fatalf("task submit printed %q", out)
		}
		ids[f[0]] = f[1]
	}
	if ids["root"] == "" {
		t.Fatalf("task submit printed no root: %q", out)
	}
	return ids
}

// startWorker runs a worker agent through the Go client.
func startWorker(t *testing.T, n *cliNode, caps ...client.Capability) {
	t.Helper()
	w := n.c.Dial("worker")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = w.Work(ctx, caps, func(ctx context.Context, a *client.TaskAssignment) (any, error) {
			return map[string]any{"by": a.Capability, "in": a.Body(), "deps": a.DepsOutput}, nil
		})
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// waitState waits until a task is in state, read as the origin.
func waitState(t *testing.T, c *client.Client, id, state string) {
	t.Helper()
	testcluster.WaitFor(t, 10*time.Second, func() bool {
		g, err := c.GetTask(context.Background(), id)
		return err == nil && g.Task != nil && g.Task.State == state
	})
}

func TestCLIAgentsSubmitApproveWatchGet(t *testing.T) {
	n := startCLINode(t)
	startWorker(t, n, client.Capability{Name: "edit", MaxInflight: 2}, client.Capability{Name: "review"})
	origin := n.c.Dial("origin")

	var out string
	testcluster.WaitFor(t, 10*time.Second, func() bool {
		out = mustRun(t, agentsCmd, n.asAgent("origin"))
		return strings.Contains(out, "worker")
	})
	if !regexp.MustCompile(`worker\s+yes\s+n1\s+edit 0/2, review 0/1\s+0/0`).MatchString(out) || !strings.HasPrefix(out, "NAME") {
		t.Fatalf("agents:\n%s", out)
	}
	var list struct{ Agents []client.AgentInfo }
	if err := json.Unmarshal([]byte(mustRun(t, agentsCmd, n.asAgent("origin", "--json"))), &list); err != nil ||
		len(list.Agents) != 1 || !list.Agents[0].Online || len(list.Agents[0].Capabilities) != 2 {
		t.Fatalf("agents --json: %+v %v", list, err)
	}

	file := writeJSON(t, "graph.json", `{"intent":"write and review","tasks":[
		{"ref":"draft","capability":"edit","input":{"topic":"tides"}},
		{"ref":"review","capability":"review","input":"be strict","deps":["draft"],"approval":true,"max_attempts":2}]}`)
	ids := submitted(t, mustRun(t, taskSubmit, n.asAgent("origin", file)))
	if ids["draft"] == "" || ids["review"] == "" {
		t.Fatalf("ids: %v", ids)
	}
	waitState(t, origin, ids["review"], "held")
	if out := mustRun(t, taskShow, n.asOperator(ids["review"])); !strings.Contains(out, "state       held") || !strings.Contains(out, "intent      write and review") {
		t.Fatalf("task show of the held task:\n%s", out)
	}
	out = mustRun(t, taskApprove, n.asOperator(ids["review"], "--reason", "fine"))
	if !strings.HasPrefix(out, "task "+ids["review"]+" approved; it is now ") {
		t.Fatalf("task approve: %q", out)
	}

	out = mustRun(t, taskWatch, n.asAgent("origin", ids["root"]))
	if !strings.Contains(out, ids["review"]+"  review  review  succeeded  agent=worker attempt=1  output=") ||
		!strings.HasSuffix(out, ids["root"]+" ended: 2 tasks: 2 succeeded\n") {
		t.Fatalf("task watch:\n%s", out)
	}

	out = mustRun(t, taskGet, n.asAgent("origin", ids["review"]))
	for _, want := range []string{
		"state       succeeded (attempt 1 of 2, agent worker)", "chain       origin", "deps        " + ids["draft"],
		`output      {"by":"review","deps":{"draft":{"by":"edit"`,
	} {
		if !strings.Contains(out, want) {
			t.Fatalf("task get lacks %q:\n%s", want, out)
		}
	}
	if !regexp.MustCompile(`(?m)^\S+\s+approved\s+-\s+-\s+by operator:local: fine$`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^\S+\s+assigned\s+worker\s+1\s*$`).MatchString(out) {
		t.Fatalf("task get's history:\n%s", out)
	}
	var g struct {
		Graph string
		Tasks []client.Task
	}
	if err := json.Unmarshal([]byte(mustRun(t, taskGet, n.asAgent("origin", ids["root"], "--json"))), &g); err != nil ||
		g.Graph != ids["root"] || len(g.Tasks) != 2 || g.Tasks[0].State != "succeeded" {
		t.Fatalf("task get --json of the graph: %+v %v", g, err)
	}
	if out := mustRun(t, taskGet, n.asAgent("origin", ids["root"])); !strings.HasPrefix(out, "graph "+ids["root"]+": 2 tasks: 2 succeeded\n") {
		t.Fatalf("task get of the graph:\n%s", out)
	}
	if _, err := run(t, taskGet, n.asAgent("origin", "t-none")); !client.IsCode(err, "not_found") {
		t.Fatalf("task get of an unknown id: %v", err)
	}
	// A dev node's envelopes are unsigned: the chain does not verify, and
	// the command says which hop and why (client.TestVerifyTaskChain
	// covers a signed chain).
	if out, err := run(t, taskVerify, n.asAgent("origin", ids["review"])); !errors.Is(err, client.ErrBrokenChain) || !regexp.MustCompile(`0\s+origin\s+`+ids["review"]+`\s+NOT VERIFIED: .*not signed`).MatchString(out) {
		t.Fatalf("task verify on a dev node: %v\n%s", err, out)
	}
	if out := mustRun(t, agentsCmd, n.asAgent("origin")); !regexp.MustCompile(`worker\s+yes\s+n1\s+edit 0/2, review 0/1\s+2/0`).MatchString(out) {
		t.Fatalf("agents after two tasks:\n%s", out)
	}
}

func TestCLIDenyCancelAndSensitive(t *testing.T) {
	n := startCLINode(t)
	startWorker(t, n, client.Capability{Name: "edit"})
	origin := n.c.Dial("origin")

	held := submitted(t, mustRun(t, taskSubmit, n.asAgent("origin", writeJSON(t, "held.json",
		`{"tasks":[{"ref":"x","capability":"edit","input":1,"approval":true},{"ref":"after","capability":"edit","deps":["x"]}]}`))))
	waitState(t, origin, held["x"], "held")
	var ue *usageError
	if _, err := run(t, taskDeny, n.asOperator(held["x"])); !errors.As(err, &ue) {
		t.Fatalf("deny without a reason: %v", err)
	}
	if out := mustRun(t, taskDeny, n.asOperator(held["x"], "--reason", "not today")); out != "task "+held["x"]+" denied; it is now cancelled\n" {
		t.Fatalf("task deny: %q", out)
	}
	if _, err := run(t, taskApprove, n.asOperator(held["x"])); err == nil || !isAdminCode(err, "conflict") ||
		!strings.Contains(err.Error(), "is cancelled, not held") || !strings.Contains(err.Error(), "hint: only a held task") {
		t.Fatalf("approving a denied task: %v", err)
	}
	if _, err := run(t, taskApprove, n.asOperator("t-none")); !isAdminCode(err, "not_found") {
		t.Fatalf("approving an unknown task: %v", err)
	}
	out, err := run(t, taskWatch, n.asAgent("origin", held["root"], "--json"))
	if err == nil || !strings.Contains(err.Error(), "2 tasks: 2 cancelled") || strings.Count(out, "\n") < 2 {
		t.Fatalf("watching a denied graph: %v\n%s", err, out)
	}
	if out := mustRun(t, taskGet, n.asAgent("origin", held["after"])); !strings.Contains(out, "dependency or parent "+held["x"]+" cancelled") {
		t.Fatalf("the dependent of the denied task:\n%s", out)
	}

	// Only the origin (or submitter) cancels; a repeat ends nothing more.
	idle := submitted(t, mustRun(t, taskSubmit, n.asAgent("origin", writeJSON(t, "idle.json", `{"tasks":[{"ref":"i","capability":"nobody.offers.this"}]}`))))
	if _, err := run(t, taskCancel, n.asAgent("stranger", idle["i"])); !client.IsCode(err, "forbidden") || !strings.Contains(err.Error(), "hint: ") {
		t.Fatalf("cancel by a stranger: %v", err)
	}
	if out := mustRun(t, taskCancel, n.asAgent("origin", idle["i"], "--reason", "no longer needed")); out != idle["i"]+": 1 task(s) cancelled\n" {
		t.Fatalf("task cancel: %q", out)
	}
	if out := mustRun(t, taskCancel, n.asAgent("origin", idle["root"])); out != idle["root"]+": 0 task(s) cancelled\n" {
		t.Fatalf("task cancel again: %q", out)
	}

	// A sensitive capability holds its tasks until approved.
	if out := mustRun(t, capabilityCmd, n.asOperator("sensitive", "edit")); !strings.HasPrefix(out, "capability edit is sensitive") {
		t.Fatalf("capability sensitive: %q", out)
	}
	if out := mustRun(t, capabilityCmd, n.asOperator("list")); !strings.HasPrefix(out, "edit\tsensitive (marked by operator:local)") {
		t.Fatalf("capability list: %q", out)
	}
	s := submitted(t, mustRun(t, taskSubmit, n.asAgent("origin", writeJSON(t, "s.json", `{"tasks":[{"ref":"s","capability":"edit","input":"x"}]}`))))
	waitState(t, origin, s["s"], "held")
	if out := mustRun(t, capabilityCmd, n.asOperator("plain", "edit")); !strings.HasPrefix(out, "capability edit is plain") {
		t.Fatalf("capability plain: %q", out)
	}
	mustRun(t, taskApprove, n.asOperator(s["s"]))
	if out := mustRun(t, taskWatch, n.asAgent("origin", s["s"])); !strings.HasSuffix(out, s["s"]+" ended: 1 tasks: 1 succeeded\n") {
		t.Fatalf("watching the approved task:\n%s", out)
	}
	p := submitted(t, mustRun(t, taskSubmit, n.asAgent("origin", writeJSON(t, "p.json", `{"tasks":[{"ref":"p","capability":"edit"}]}`))))
	waitState(t, origin, p["p"], "succeeded")

	// Mistakes on the command line.
	for _, args := range [][]string{
		{"frobnicate"}, {"sensitive"}, {"sensitive", "a", "b"},
	} {
		if _, err := run(t, capabilityCmd, n.asOperator(args...)); !errors.As(err, &ue) {
			t.Fatalf("capability %v: %v", args, err)
		}
	}
	if _, err := run(t, capabilityCmd, n.asOperator("sensitive", "no spaces")); !isAdminCode(err, "bad_request") {
		t.Fatalf("capability sensitive with a bad name: %v", err)
	}
	if _, err := run(t, taskSubmit, n.asAgent("origin", writeJSON(t, "bad.json", `{"tasks":[{"ref":"a","capability":"edit","inputs":1}]}`))); !errors.As(err, &ue) {
		t.Fatalf("a submit file with an unknown field: %v", err)
	}
	if _, err := run(t, taskSubmit, n.asAgent("origin", writeJSON(t, "cycle.json",
		`{"tasks":[{"ref":"a","capability":"edit","deps":["b"]},{"ref":"b","capability":"edit","deps":["a"]}]}`))); !client.IsCode(err, "cycle") {
		t.Fatalf("a submit file with a cycle: %v", err)
	}
	if err := runTask([]string{"frobnicate"}); !errors.As(err, &ue) {
		t.Fatalf("task frobnicate: %v", err)
	}
}

// mcpd queue list and peek, through the admin socket.
func TestCLIQueueListPeek(t *testing.T) {
	n := startCLINode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl := n.c.Dial("alice")
	for i := range 3 {
		if _, err := cl.Enqueue(ctx, "jobs", map[string]int{"n": i}); err != nil {
			t.Fatal(err)
		}
	}
	if out := mustRun(t, queueCmd, n.asOperator("list")); !regexp.MustCompile(`jobs\s+3\s+0\s+0\s+0\s+0\s+3`).MatchString(out) {
		t.Fatalf("queue list:\n%s", out)
	}
	out := mustRun(t, queueCmd, n.asOperator("peek", "jobs", "--limit", "2"))
	if !regexp.MustCompile(`(?m)^1\s+ready\s+0\s+`).MatchString(out) || strings.Count(out, "ready") != 2 || !strings.Contains(out, `"from":"alice"`) {
		t.Fatalf("queue peek:\n%s", out)
	}
	if _, err := run(t, queueCmd, n.asOperator("peek", "nosuch")); !isAdminCode(err, "not_found") {
		t.Fatalf("peek of an unknown queue: %v", err)
	}
	if _, err := run(t, queueCmd, n.asOperator("frob")); err == nil {
		t.Fatal("queue frob succeeded")
	}
}

// mcpd task list: the operator's table of tasks, newest first, filtered
// and paged, and its --json.
func TestCLITaskList(t *testing.T) {
	n := startCLINode(t)
	origin := n.c.Dial("origin")
	if out := mustRun(t, taskList, n.asOperator()); out != "ID  GRAPH  CAPABILITY  STATE  AGENT  ATTEMPTS  AGE\nall tasks: none\n" {
		t.Fatalf("task list of no tasks: %q", out)
	}
	held := submitted(t, mustRun(t, taskSubmit, n.asAgent("origin", writeJSON(t, "held.json",
		`{"intent":"pay","tasks":[{"ref":"x","capability":"wire","input":1,"approval":true},{"ref":"after","capability":"edit","deps":["x"]}]}`))))
	idle := submitted(t, mustRun(t, taskSubmit, n.asAgent("origin", writeJSON(t, "idle.json", `{"tasks":[{"ref":"i","capability":"edit"}]}`))))
	waitState(t, origin, held["x"], "held")
	waitState(t, origin, idle["i"], "ready")

	out := mustRun(t, taskList, n.asOperator())
	row := func(id, graph, capName, state string) string {
		return `(?m)^` + id + `\s+` + graph + `\s+` + capName + `\s+` + state + `\s+-\s+0/3\s+\d+s$`
	}
	if !strings.HasPrefix(out, "ID ") || !regexp.MustCompile(row(idle["i"], idle["root"], "edit", "ready")+`\n`+row(held["after"], held["root"], "edit", "waiting")+`\n`+row(held["x"], held["root"], "wire", "held")).MatchString(out) ||
		!strings.HasSuffix(out, "all tasks: 1 waiting, 1 held, 1 ready\n") || strings.Contains(out, "more:") {
		t.Fatalf("task list:\n%s", out)
	}
	if out := mustRun(t, taskList, n.asOperator("--state", "held")); !regexp.MustCompile(row(held["x"], held["root"], "wire", "held")).MatchString(out) || strings.Count(out, "\n") != 3 {
		t.Fatalf("task list --state held:\n%s", out)
	}
	if out := mustRun(t, taskList, n.asOperator("--state", "held", "--state", "ready", "--capability", "edit")); strings.Count(out, "\n") != 3 || !strings.Contains(out, idle["i"]+" ") {
		t.Fatalf("task list --state held --state ready --capability edit:\n%s", out)
	}
	if out := mustRun(t, taskList, n.asOperator("--graph", held["root"], "--state", "waiting,held")); strings.Count(out, "\n") != 4 || strings.Contains(out, idle["i"]+" ") {
		t.Fatalf("task list --graph:\n%s", out)
	}
	out = mustRun(t, taskList, n.asOperator("--roots", "--limit", "1"))
	if !regexp.MustCompile(row(idle["i"], idle["root"], "edit", "ready")).MatchString(out) || !strings.Contains(out, "more: mcpd task list ... --before "+idle["i"]+"\n") {
		t.Fatalf("task list --roots --limit 1:\n%s", out)
	}
	if out := mustRun(t, taskList, n.asOperator("--roots", "--limit", "1", "--before", idle["i"])); !regexp.MustCompile(row(held["x"], held["root"], "wire", "held")).MatchString(out) || strings.Contains(out, "more:") {
		t.Fatalf("task list --roots, the second page:\n%s", out)
	}

	var res struct {
		Tasks []struct {
			ID, State, Intent, Submitter string
			Hops                         []struct{ Agent string }
		}
		Next   string
		Counts map[string]int64
	}
	raw := mustRun(t, taskList, n.asOperator("--state", "held", "--json"))
	if err := json.Unmarshal([]byte(raw), &res); err != nil || strings.Count(raw, "\n") != 1 || len(res.Tasks) != 1 || res.Tasks[0].ID != held["x"] ||
		res.Tasks[0].Intent != "pay" || res.Tasks[0].Submitter != "origin" || len(res.Tasks[0].Hops) != 1 || res.Next != "" || res.Counts["ready"] != 1 {
		t.Fatalf("task list --json: %v\n%s", err, raw)
	}

	// Mistakes: the node refuses bad filters, the command extra arguments.
	if _, err := run(t, taskList, n.asOperator("--state", "running")); !isAdminCode(err, "bad_request") || !strings.Contains(err.Error(), "waiting, held, ready") {
		t.Fatalf("task list --state running: %v", err)
	}
	if _, err := run(t, taskList, n.asOperator("--limit", "0")); !isAdminCode(err, "bad_request") {
		t.Fatalf("task list --limit 0: %v", err)
	}
	var ue *usageError
	if _, err := run(t, taskList, n.asOperator("extra")); !errors.As(err, &ue) {
		t.Fatalf("task list extra: %v", err)
	}
}

// One positional argument comes before or after the flags, "-" (standard
// input) included.
func TestParseOne(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-", "--agent", "x"}, "-"},
		{[]string{"--agent", "x", "-"}, "-"},
		{[]string{"g.json", "--agent", "x"}, "g.json"},
		{[]string{"--agent", "x", "g.json"}, "g.json"},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		agent := fs.String("agent", "", "")
		if got, err := parseOne(fs, tc.args, "FILE"); err != nil || got != tc.want || *agent != "x" {
			t.Errorf("%q: %q, agent %q, %v; want %q, agent x", tc.args, got, *agent, err, tc.want)
		}
	}
}
