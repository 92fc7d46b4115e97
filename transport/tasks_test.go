package transport_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/mcpd/mcpd/internal/testcluster"
)

// Delegation over WebSocket on three nodes: agents register on different
// nodes, an originator submits a graph through a third, each task is
// pushed to the agent that can do it with its dependencies' outputs, the
// editor delegates a sub-task under the task it works on, the originator
// watches the whole graph and reads the final history and provenance.
func TestTaskGraphAcrossNodes(t *testing.T) {
	c, leader, followers := startThree(t)
	editor := login(t, c, followers[0].URL, "editor")
	reviewer := login(t, c, followers[1].URL, "reviewer")
	origin := login(t, c, leader.URL, "origin")
	editor.ok("register", `"capabilities":[{"name":"edit","max_inflight":2}],"meta":{"model":"m1"}`)
	reviewer.ok("register", `"capabilities":[{"name":"review"},{"name":"factcheck","max_inflight":3}]`)

	testcluster.WaitFor(t, waitTime, func() bool {
		f := origin.ok("agents", "")
		return strings.Contains(string(f["agents"]), `"name":"editor","online":true`) && strings.Contains(string(f["agents"]), `"name":"reviewer","online":true`)
	})

	sub := origin.ok("task.submit", `"intent":"publish a correct article","tasks":[`+
		`{"ref":"draft","capability":"edit","input":`+env("origin", `{"topic":"tides"}`)+`},`+
		`{"ref":"review","capability":"review","input":`+env("origin", `"check it"`)+`,"deps":["draft"]}]`)
	var ids map[string]string
	if err := json.Unmarshal(sub["ids"], &ids); err != nil || ids["draft"] == "" || ids["review"] == "" {
		t.Fatalf("task.submit: %s", sub)
	}
	root := sub.str("root")
	watch := origin.ok("task.watch", `"task":"`+root+`"`).str("watch")

	push := editor.next(isOp("task"))
	var got struct {
		Task struct {
			ID     string   `json:"id"`
			Intent string   `json:"intent"`
			Origin string   `json:"origin"`
			Chain  []string `json:"chain"`
			Deps   map[string]json.RawMessage
		} `json:"task"`
		Attempt int `json:"attempt"`
	}
	if err := json.Unmarshal(mustJSON(t, push), &got); err != nil || got.Task.ID != ids["draft"] || got.Task.Intent != "publish a correct article" || got.Task.Origin != "origin" || got.Attempt != 1 {
		t.Fatalf("push to the editor: %s", push)
	}
	// The editor delegates a fact check under the draft.
	fc := editor.ok("task.submit", `"parent":"`+ids["draft"]+`","tasks":[{"ref":"fc","capability":"factcheck","input":`+env("editor", `"tides are lunar"`)+`}]`)
	fcID := strings.Trim(string(mustField(t, fc, "ids", "fc")), `"`)
	fcPush := reviewer.next(isOp("task"))
	if !strings.Contains(string(fcPush["task"]), `"chain":["origin","editor"]`) || !strings.Contains(string(fcPush["task"]), `"origin":"origin"`) {
		t.Fatalf("the fact check's push: %s", fcPush)
	}
	reviewer.ok("task.done", `"task":"`+fcID+`","attempt":1,"output":{"verdict":"true"}`)
	// A wrong agent or attempt cannot settle the draft.
	reviewer.callErr("not_found", "task.done", `"task":"`+ids["draft"]+`","attempt":1,"output":1`)
	editor.ok("task.done", `"task":"`+ids["draft"]+`","attempt":1,"output":{"text":"The tides follow the moon."}`)

	rp := reviewer.next(func(f frame) bool { return f.op() == "task" && strings.Contains(string(f["task"]), ids["review"]) })
	if !strings.Contains(string(rp["task"]), `"deps_output":{"draft":{"text":"The tides follow the moon."}}`) {
		t.Fatalf("the review's push carries no deps_output: %s", rp)
	}
	reviewer.ok("task.done", `"task":"`+ids["review"]+`","attempt":1,"output":"approved"`)

	// The watcher saw the graph end, the sub-task included.
	seen := map[string]string{}
	for seen[ids["review"]] != "succeeded" || seen[fcID] != "succeeded" {
		u := origin.next(isOp("task.update"))
		if u.str("watch") != watch {
			t.Fatalf("update of another watch: %s", u)
		}
		var k struct{ ID, State string }
		_ = json.Unmarshal(u["task"], &k)
		seen[k.ID] = k.State
	}
	g := origin.ok("task.get", `"task":"`+ids["review"]+`"`)
	var k struct {
		State   string
		Output  json.RawMessage
		History []struct{ Event, Agent string }
		Hops    []struct{ Agent string }
	}
	if err := json.Unmarshal(g["task"], &k); err != nil || k.State != "succeeded" || string(k.Output) != `"approved"` || len(k.History) != 4 || k.History[2].Agent != "reviewer" {
		t.Fatalf("task.get: %s", g)
	}
	fg := editor.ok("task.get", `"task":"`+fcID+`"`)
	if !strings.Contains(string(fg["task"]), `"hops":[{"agent":"origin","task":"`+ids["draft"]) {
		t.Fatalf("the sub-task's hops: %s", fg)
	}
	all := origin.ok("task.get", `"task":"`+root+`"`)
	if n := strings.Count(string(all["tasks"]), `"state":"succeeded"`); n != 2 {
		t.Fatalf("the graph: %d tasks succeeded: %s", n, all)
	}

	// Refusals change nothing.
	origin.callErr("cycle", "task.submit", `"tasks":[{"ref":"a","capability":"edit","input":`+env("origin", "1")+`,"deps":["b"]},{"ref":"b","capability":"edit","input":`+env("origin", "2")+`,"deps":["a"]}]`)
	origin.callErr("bad_request", "task.submit", `"tasks":[{"ref":"a","capability":"edit","input":`+env("origin", "1")+`,"deps":["nope"]}]`)
	origin.callErr("bad_request", "task.submit", `"tasks":[{"ref":"a","capability":"edit input","input":`+env("origin", "1")+`}]`)
	origin.callErr("forbidden", "task.submit", `"parent":"`+ids["review"]+`","tasks":[{"ref":"a","capability":"edit","input":`+env("origin", "1")+`}]`)
	origin.callErr("not_found", "task.get", `"task":"t999"`)
	editor.callErr("bad_request", "register", `"capabilities":[{"name":"edit","max_inflight":0}]`)

	// The editor leaves: offline everywhere.
	editor.closeNow()
	testcluster.WaitFor(t, waitTime, func() bool {
		return strings.Contains(string(reviewer.ok("agents", "")["agents"]), `"name":"editor","online":false`)
	})
}

// A task for a capability nobody offers waits, and is routed when an
// agent registers it; a held task waits for approval (the agents cannot
// approve).
func TestTaskWaitsForCapability(t *testing.T) {
	c, rc := one(t, "origin")
	sub := rc.ok("task.submit", `"tasks":[{"ref":"x","capability":"ghidra.decompile","input":`+env("origin", `"fw.bin"`)+`}]`)
	id := strings.Trim(string(mustField(t, sub, "ids", "x")), `"`)
	if s := taskState(t, rc, id); s != "ready" {
		t.Fatalf("with nobody to do it: %s", s)
	}
	worker := login(t, c, c.Nodes[0].URL, "rev")
	worker.ok("register", `"capabilities":[{"name":"ghidra.decompile","max_inflight":1}]`)
	p := worker.next(isOp("task"))
	if !strings.Contains(string(p["task"]), `"id":"`+id+`"`) {
		t.Fatalf("push: %s", p)
	}
	worker.ok("task.fail", `"task":"`+id+`","attempt":1,"error":"unsupported","retry":false`)
	if s := taskState(t, rc, id); s != "failed" {
		t.Fatalf("after a final failure: %s", s)
	}
}

func taskState(t *testing.T, rc *rawConn, id string) string {
	t.Helper()
	var k struct{ State string }
	if err := json.Unmarshal(rc.ok("task.get", `"task":"`+id+`"`)["task"], &k); err != nil {
		t.Fatal(err)
	}
	return k.State
}

func mustJSON(t *testing.T, f frame) []byte {
	t.Helper()
	b, err := json.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustField(t *testing.T, f frame, field, key string) json.RawMessage {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(f[field], &m); err != nil || m[key] == nil {
		t.Fatalf("%s.%s in %s", field, key, f)
	}
	return m[key]
}
