package transport_test

import (
	"encoding/json"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/mcpd/mcpd/transport"
)

// adminAPI calls an admin handler over HTTP.
type adminAPI struct {
	t   *testing.T
	url string
}

func serveAdmin(t *testing.T, h http.Handler) *adminAPI {
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &adminAPI{t: t, url: srv.URL}
}

// do sends a request and returns the status and the decoded JSON answer.
func (a *adminAPI) do(method, path, body, token string) (int, map[string]json.RawMessage) {
	a.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, a.url+path, rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]json.RawMessage
	if err := json.Unmarshal(raw, &out); err != nil {
		a.t.Fatalf("%s %s: HTTP %d, not JSON: %s", method, path, resp.StatusCode, raw)
	}
	return resp.StatusCode, out
}

func (a *adminAPI) want(status int, method, path, body, token string) map[string]json.RawMessage {
	a.t.Helper()
	got, out := a.do(method, path, body, token)
	if got != status {
		a.t.Fatalf("%s %s: HTTP %d, want %d: %s", method, path, got, status, mustMarshal(out))
	}
	return out
}

// wantList GETs path and returns its JSON array answer.
func (a *adminAPI) wantList(t *testing.T, path string) []json.RawMessage {
	t.Helper()
	resp, err := http.Get(a.url + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out []json.RawMessage
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET %s: HTTP %d %v", path, resp.StatusCode, err)
	}
	return out
}

func mustMarshal(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// taskOf decodes the task of a GET /v1/tasks/{id} answer.
func taskOf(t *testing.T, out map[string]json.RawMessage) (k struct {
	ID, State, Error string
	History          []struct{ Event, Detail string }
}) {
	t.Helper()
	if err := json.Unmarshal(out["task"], &k); err != nil || k.ID == "" {
		t.Fatalf("no task in %s", mustMarshal(out))
	}
	return k
}

// The operator's delegation endpoints: held tasks approved or denied in
// the operator's name (socket and token alike), conflicts and unknown
// ids, sensitive capabilities, operator cancels and presence.
func TestAdminTasks(t *testing.T) {
	c, origin := one(t, "origin")
	admin := transport.NewAdmin(c.Nodes[0].Node, nil, slog.New(slog.DiscardHandler))
	local := serveAdmin(t, admin.LocalHandler())
	const token = "a-token-of-the-operator"
	remote := serveAdmin(t, admin.TokenHandler(token))
	worker := login(t, c, c.Nodes[0].URL, "worker")
	worker.ok("register", `"capabilities":[{"name":"edit","max_inflight":4}]`)

	sub := origin.ok("task.submit", `"tasks":[`+
		`{"ref":"a","capability":"edit","input":`+env("origin", "1")+`,"approval":true},`+
		`{"ref":"b","capability":"edit","input":`+env("origin", "2")+`,"approval":true}]`)
	a := strings.Trim(string(mustField(t, sub, "ids", "a")), `"`)
	b := strings.Trim(string(mustField(t, sub, "ids", "b")), `"`)
	root := sub.str("root")

	if k := taskOf(t, local.want(200, "GET", "/v1/tasks/"+a, "", "")); k.State != "held" {
		t.Fatalf("before approval: %+v", k)
	}
	graph := local.want(200, "GET", "/v1/tasks/"+root, "", "")
	if strings.Trim(string(graph["graph"]), `"`) != root || strings.Count(mustMarshal(graph), `"state":"held"`) != 2 {
		t.Fatalf("the graph: %s", mustMarshal(graph))
	}
	local.want(404, "GET", "/v1/tasks/t-none", "", "")
	remote.want(401, "POST", "/v1/tasks/"+a+"/approve", "", "wrong-token")

	// Approved through the token: the operator is named, the task runs.
	// The answer is the task as it is once this node applied the
	// decision: routed to the worker in the same entry.
	k := taskOf(t, remote.want(200, "POST", "/v1/tasks/"+a+"/approve", `{"reason":"looks fine"}`, token))
	if k.State != "assigned" || !slices.Contains(k.History, struct{ Event, Detail string }{"approved", "by operator:token: looks fine"}) {
		t.Fatalf("after approval: %+v", k)
	}
	if p := worker.next(isOp("task")); !strings.Contains(string(p["task"]), a) {
		t.Fatalf("push after approval: %s", p)
	}

	// A denial needs a reason; it cancels the task in the socket's name.
	local.want(400, "POST", "/v1/tasks/"+b+"/deny", "", "")
	k = taskOf(t, local.want(200, "POST", "/v1/tasks/"+b+"/deny", `{"reason":"not this one"}`, ""))
	if k.State != "cancelled" || !strings.Contains(k.Error, "denied by operator operator:local: not this one") {
		t.Fatalf("after denial: %+v", k)
	}

	// Not held: a conflict that says so; unknown: not found.
	out := local.want(409, "POST", "/v1/tasks/"+b+"/approve", "", "")
	if msg := string(out["error"]); !strings.Contains(msg, "is cancelled, not held") || strings.Contains(msg, "envelope") {
		t.Fatalf("conflict: %s", mustMarshal(out))
	}
	local.want(404, "POST", "/v1/tasks/t-none/approve", "", "")
	local.want(404, "POST", "/v1/tasks/t-none/deny", `{"reason":"x"}`, "")
	local.want(400, "POST", "/v1/tasks/"+b+"/approve", `{"nonsense":1}`, "")

	// A sensitive capability holds new tasks until it is plain again.
	out = local.want(200, "PUT", "/v1/capabilities/edit/sensitive", "", "")
	if string(out["sensitive"]) != "true" || string(out["operator"]) != `"operator:local"` {
		t.Fatalf("PUT sensitive: %s", mustMarshal(out))
	}
	local.want(400, "PUT", "/v1/capabilities/not%20a%20name/sensitive", "", "")
	s1 := origin.ok("task.submit", `"tasks":[{"ref":"s","capability":"edit","input":`+env("origin", "3")+`}]`)
	held := strings.Trim(string(mustField(t, s1, "ids", "s")), `"`)
	if k := taskOf(t, local.want(200, "GET", "/v1/tasks/"+held, "", "")); k.State != "held" {
		t.Fatalf("a task of a sensitive capability: %+v", k)
	}
	local.want(200, "DELETE", "/v1/capabilities/edit/sensitive", "", "")
	s2 := origin.ok("task.submit", `"tasks":[{"ref":"p","capability":"edit","input":`+env("origin", "4")+`}]`)
	plain := strings.Trim(string(mustField(t, s2, "ids", "p")), `"`)
	if k := taskOf(t, local.want(200, "GET", "/v1/tasks/"+plain, "", "")); k.State != "assigned" {
		t.Fatalf("a task of a plain capability: %+v", k)
	}

	// The operator cancels what an agent submitted.
	out = local.want(200, "POST", "/v1/tasks/"+held+"/cancel", `{"reason":"cleanup"}`, "")
	if string(out["cancelled"]) != "1" {
		t.Fatalf("cancel: %s", mustMarshal(out))
	}
	if k := taskOf(t, local.want(200, "GET", "/v1/tasks/"+held, "", "")); k.State != "cancelled" || !strings.Contains(k.Error, "operator operator:local: cleanup") {
		t.Fatalf("after the operator's cancel: %+v", k)
	}
	local.want(404, "POST", "/v1/tasks/t-none/cancel", "", "")

	// Presence: the agents that registered, with their load.
	var pres struct {
		Agents []struct {
			Name         string
			Online       bool
			Capabilities []struct {
				Name        string
				MaxInflight int `json:"max_inflight"`
			}
		}
	}
	raw := local.want(200, "GET", "/v1/presence", "", "")
	if err := json.Unmarshal([]byte(mustMarshal(raw)), &pres); err != nil || len(pres.Agents) != 1 || pres.Agents[0].Name != "worker" || !pres.Agents[0].Online ||
		len(pres.Agents[0].Capabilities) != 1 || pres.Agents[0].Capabilities[0].MaxInflight != 4 {
		t.Fatalf("presence: %s", mustMarshal(raw))
	}
}

// taskList decodes a GET /v1/tasks answer.
type taskList struct {
	Tasks []struct {
		ID, Graph, Capability, State, Origin, Intent, Submitter, Parent string
		Input                                                           json.RawMessage
		Chain                                                           []string
		Hops                                                            []struct{ Agent, Task string }
		Created                                                         int64
		HeldSince                                                       int64 `json:"held_since"`
	}
	Next   string
	Counts map[string]int64
}

func (a *adminAPI) list(t *testing.T, query string) (l taskList) {
	t.Helper()
	out := a.want(200, "GET", "/v1/tasks"+query, "", "")
	if err := json.Unmarshal([]byte(mustMarshal(out)), &l); err != nil || out["tasks"] == nil || out["next"] == nil {
		t.Fatalf("GET /v1/tasks%s: %s %v", query, mustMarshal(out), err)
	}
	return l
}

func (l taskList) ids() string {
	var ids []string
	for _, k := range l.Tasks {
		ids = append(ids, k.ID)
	}
	return strings.Join(ids, " ")
}

// GET /v1/tasks: pages of tasks newest first, filtered by state,
// capability, graph and roots, with the counts by state; held tasks come
// with what the approver reads; bad filters are refused.
func TestAdminTaskList(t *testing.T) {
	c, origin := one(t, "origin")
	admin := transport.NewAdmin(c.Nodes[0].Node, nil, slog.New(slog.DiscardHandler))
	local := serveAdmin(t, admin.LocalHandler())
	const token = "a-token-of-the-operator"
	remote := serveAdmin(t, admin.TokenHandler(token))
	worker := login(t, c, c.Nodes[0].URL, "worker")
	worker.ok("register", `"capabilities":[{"name":"edit","max_inflight":1}]`)

	if l := local.list(t, ""); len(l.Tasks) != 0 || l.Next != "" || len(l.Counts) != 7 || l.Counts["held"] != 0 {
		t.Fatalf("no tasks yet: %+v", l)
	}
	// g1: a held for approval, b waiting on it. g2: c runs on the worker,
	// which delegates d under it (a graph of its own, not a root).
	s1 := origin.ok("task.submit", `"intent":"pay the vendor","tasks":[`+
		`{"ref":"a","capability":"edit","input":`+env("origin", `"wire 100"`)+`,"approval":true},`+
		`{"ref":"b","capability":"edit","input":`+env("origin", "2")+`,"deps":["a"]}]`)
	a := strings.Trim(string(mustField(t, s1, "ids", "a")), `"`)
	b := strings.Trim(string(mustField(t, s1, "ids", "b")), `"`)
	g1 := s1.str("root")
	s2 := origin.ok("task.submit", `"tasks":[{"ref":"c","capability":"edit","input":`+env("origin", "3")+`}]`)
	cid := strings.Trim(string(mustField(t, s2, "ids", "c")), `"`)
	if p := worker.next(isOp("task")); !strings.Contains(string(p["task"]), cid) {
		t.Fatalf("push: %s", p)
	}
	s3 := worker.ok("task.submit", `"parent":"`+cid+`","tasks":[{"ref":"d","capability":"review","input":`+env("worker", "4")+`}]`)
	d := strings.Trim(string(mustField(t, s3, "ids", "d")), `"`)

	l := local.list(t, "")
	if l.ids() != strings.Join([]string{d, cid, b, a}, " ") || l.Next != "" {
		t.Fatalf("every task, newest first: %s next %q", l.ids(), l.Next)
	}
	if want := map[string]int64{"waiting": 1, "held": 1, "ready": 1, "assigned": 1, "succeeded": 0, "failed": 0, "cancelled": 0}; !maps.Equal(l.Counts, want) {
		t.Fatalf("counts: %v", l.Counts)
	}

	// The approval page: held tasks, with what the approver decides on;
	// the same through the token.
	for _, api := range []*adminAPI{local, remote} {
		out := api.want(200, "GET", "/v1/tasks?state=held", "", token)
		var h taskList
		if err := json.Unmarshal([]byte(mustMarshal(out)), &h); err != nil || len(h.Tasks) != 1 {
			t.Fatalf("held: %s", mustMarshal(out))
		}
		k := h.Tasks[0]
		if k.ID != a || k.Graph != g1 || k.Capability != "edit" || k.State != "held" || !strings.Contains(string(k.Input), `"body":"wire 100"`) ||
			k.Intent != "pay the vendor" || k.Origin != "origin" || k.Submitter != "origin" || !slices.Equal(k.Chain, []string{"origin"}) ||
			len(k.Hops) != 1 || k.Hops[0].Agent != "origin" || k.Hops[0].Task != a || k.Created == 0 || k.HeldSince < k.Created || h.Counts["held"] != 1 {
			t.Fatalf("the held task: %s", mustMarshal(out))
		}
	}
	if l := local.list(t, "?state=held&state=waiting"); l.ids() != b+" "+a {
		t.Fatalf("held or waiting: %s", l.ids())
	}
	if l := local.list(t, "?state=ready,assigned"); l.ids() != d+" "+cid {
		t.Fatalf("ready or assigned: %s", l.ids())
	}
	if l := local.list(t, "?capability=review"); l.ids() != d || l.Tasks[0].Submitter != "worker" || !slices.Equal(l.Tasks[0].Chain, []string{"origin", "worker"}) || l.Tasks[0].Parent != cid {
		t.Fatalf("capability review: %+v", l)
	}
	if l := local.list(t, "?graph="+g1); l.ids() != b+" "+a {
		t.Fatalf("graph %s: %s", g1, l.ids())
	}
	// Roots: one row per graph submitted by an agent on its own.
	if l := local.list(t, "?roots=1"); l.ids() != cid+" "+a {
		t.Fatalf("roots: %s", l.ids())
	}
	if l := local.list(t, "?roots=1&state=held"); l.ids() != a {
		t.Fatalf("held roots: %s", l.ids())
	}

	// Paging: the cursor of each page leads to the next, the last has none.
	var pages []string
	next := ""
	for i := 0; i < 5; i++ {
		l := local.list(t, "?limit=3&before="+next)
		pages = append(pages, l.ids())
		if next = l.Next; next == "" {
			break
		}
	}
	if len(pages) != 2 || pages[0] != strings.Join([]string{d, cid, b}, " ") || pages[1] != a {
		t.Fatalf("pages of 3: %q", pages)
	}
	if l := local.list(t, "?roots=1&limit=1"); l.ids() != cid || l.Next != cid {
		t.Fatalf("roots, a page of 1: %s next %q", l.ids(), l.Next)
	} else if l := local.list(t, "?roots=1&limit=1&before="+l.Next); l.ids() != a || l.Next != "" {
		t.Fatalf("roots, the second page: %s next %q", l.ids(), l.Next)
	}

	// Bad filters.
	for _, q := range []string{
		"?state=running", "?state=held,", "?capability=no%20spaces", "?graph=" + a, "?roots=maybe",
		"?limit=0", "?limit=1001", "?limit=ten", "?before=" + g1, "?before=t0", "?status=held",
		"?graph=" + g1 + "&graph=" + g1,
	} {
		out := local.want(400, "GET", "/v1/tasks"+q, "", "")
		if string(out["code"]) != `"bad_request"` || string(out["error"]) == `""` {
			t.Fatalf("GET /v1/tasks%s: %s", q, mustMarshal(out))
		}
	}
	remote.want(401, "GET", "/v1/tasks", "", "wrong-token")
}
