package transport_test

import (
	"encoding/json"
	"io"
	"log/slog"
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
	// The answer is the task as the decision left it (ready; routing
	// follows in the same entry).
	k := taskOf(t, remote.want(200, "POST", "/v1/tasks/"+a+"/approve", `{"reason":"looks fine"}`, token))
	if k.State != "ready" || !slices.Contains(k.History, struct{ Event, Detail string }{"approved", "by operator:token: looks fine"}) {
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
