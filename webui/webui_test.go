package webui_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/mcpd/mcpd/cluster"
	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/internal/testcluster"
	"github.com/mcpd/mcpd/operator"
	"github.com/mcpd/mcpd/transport"
	"github.com/mcpd/mcpd/webui"
	bolt "go.etcd.io/bbolt"
)

// The passkey ceremonies themselves run in a real browser
// (systemtest/browser_test.go); these tests hold what surrounds them:
// who gets in without one, CSRF and origins, sessions across nodes.

const token = "operator-token-0123456789"

type uiNode struct {
	url string
	srv *httptest.Server
}

func startUI(t *testing.T, nd *testcluster.Node) uiNode {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	admin := transport.NewAdmin(nd.Node, nil, log)
	ui, err := webui.New(nd.Node, admin, webui.Config{Origins: []string{"https://localhost:4436"}, SessionTTL: time.Hour, Token: token}, log)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewTLSServer(ui.Handler())
	t.Cleanup(srv.Close)
	return uiNode{url: srv.URL, srv: srv}
}

type req struct {
	method, path, body string
	header             map[string]string
}

func (u uiNode) do(t *testing.T, r req) (int, http.Header, map[string]any) {
	t.Helper()
	var body io.Reader
	if r.body != "" {
		body = strings.NewReader(r.body)
	}
	hr, err := http.NewRequest(r.method, u.url+r.path, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range r.header {
		hr.Header.Set(k, v)
	}
	resp, err := u.srv.Client().Do(hr)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	raw, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, resp.Header, out
}

// session makes an operator with a session, as an enrollment would,
// proposing the commands the UI proposes (the passkey record is a
// stand-in: no ceremony is run here). An election may answer a command
// unavailable, its outcome unknown: an invite is then made again under a
// new code (a lost one expires unused), and an enrollment counts once its
// session is there when everything committed has been applied.
func session(t *testing.T, c *testcluster.Cluster, name string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nd := c.Nodes[0].Node
	call := func(what string, typ fsm.MessageType, actor string, body any) bool {
		t.Helper()
		rep, err := nd.Call(ctx, typ, actor, body)
		switch {
		case err == nil && rep.Err == nil:
			return true
		case err != nil && (errors.Is(err, cluster.ErrUnavailable) || errors.Is(err, cluster.ErrUnknown)) && ctx.Err() == nil:
			t.Logf("%s: %v", what, err)
			return false
		case err != nil:
			t.Fatalf("%s: %v", what, err)
		}
		t.Fatalf("%s: %v", what, rep.Err)
		return false
	}
	var code string
	for {
		code = operator.NewCode()
		if call("invite", fsm.TypeOperatorInvite, "operator:local", &fsm.OperatorInviteArgs{Name: name, CodeHash: operator.HashCode(code), TTLMs: 60_000}) {
			break
		}
	}
	tok := operator.NewToken()
	for !call("enroll", fsm.TypeOperatorEnroll, "operator:"+name, &fsm.OperatorEnrollArgs{
		CodeHash: operator.HashCode(code), Handle: []byte("handle-of-" + name + "-0123456789"),
		Cred:    operator.NewCred{ID: []byte("cred-" + name), Data: []byte(`{}`)},
		Session: operator.HashToken(tok), SessionTTLMs: 3_600_000}) {
		c.WaitApplied()
		var sess *operator.Session
		if err := nd.Read(func(tx *bolt.Tx) (err error) {
			sess, err = operator.GetSession(tx, operator.HashToken(tok))
			return err
		}); err == nil && sess != nil {
			break // the enrollment whose answer was lost took effect
		}
	}
	c.WaitApplied()
	return tok
}

// doAgain is do for a request that changes something and may be sent
// again when it is answered 503 unavailable: an election lost the
// command, or its answer (docs/protocol.md: safe to retry). lost reports
// that an earlier attempt's outcome was unknown: it may have taken
// effect, so the last answer may be the one to a request made twice.
func (u uiNode) doAgain(t *testing.T, r req) (got int, hdr http.Header, body map[string]any, lost bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, hdr, body = u.do(t, r)
		if got != http.StatusServiceUnavailable || body["code"] != "unavailable" || time.Now().After(deadline) {
			return got, hdr, body, lost
		}
		msg, _ := body["error"].(string)
		lost = lost || strings.Contains(msg, "outcome unknown")
		t.Logf("%s %s: %d %v; sending it again", r.method, r.path, got, body)
	}
}

func cookie(tok string) string { return "__Host-mcpd_session=" + tok }

func TestWhoGetsIn(t *testing.T) {
	c := testcluster.Start(t, 3, testcluster.Options{})
	ui := startUI(t, c.Nodes[1]) // a follower or the leader: either serves
	tok := session(t, c, "alice")
	csrf := operator.CSRFToken(tok)

	for _, tc := range []struct {
		name string
		r    req
		want int
		code string
	}{
		{"no credentials", req{method: "GET", path: "/v1/queues"}, 401, "unauthenticated"},
		{"wrong token", req{method: "GET", path: "/v1/queues", header: map[string]string{"Authorization": "Bearer nope"}}, 401, "unauthenticated"},
		{"unknown session", req{method: "GET", path: "/v1/queues", header: map[string]string{"Cookie": cookie("forged")}}, 401, "unauthenticated"},
		{"token", req{method: "GET", path: "/v1/queues", header: map[string]string{"Authorization": "Bearer " + token}}, 200, ""},
		{"session", req{method: "GET", path: "/v1/queues", header: map[string]string{"Cookie": cookie(tok)}}, 200, ""},
		{"session write without CSRF", req{method: "POST", path: "/v1/operators/invites", body: `{"name":"bob"}`,
			header: map[string]string{"Cookie": cookie(tok)}}, 403, "forbidden"},
		{"session write with a wrong CSRF", req{method: "POST", path: "/v1/operators/invites", body: `{"name":"bob"}`,
			header: map[string]string{"Cookie": cookie(tok), "X-CSRF-Token": "x" + csrf}}, 403, "forbidden"},
		{"cross-site write", req{method: "POST", path: "/v1/operators/invites", body: `{"name":"bob"}`,
			header: map[string]string{"Cookie": cookie(tok), "X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"}}, 403, "forbidden"},
		{"foreign origin", req{method: "POST", path: "/ui/api/login/begin",
			header: map[string]string{"Origin": "https://evil.example"}}, 403, "forbidden"},
		{"approve with a session only", req{method: "POST", path: "/v1/tasks/t1/approve", body: `{}`,
			header: map[string]string{"Cookie": cookie(tok), "X-CSRF-Token": csrf}}, 403, "reauth_required"},
		{"decide without a confirmation", req{method: "POST", path: "/ui/api/tasks/t1/decide", body: `{"approve":true,"assertion":{}}`,
			header: map[string]string{"Cookie": cookie(tok), "X-CSRF-Token": csrf}}, 403, "reauth_required"},
		{"reauth without a session", req{method: "POST", path: "/ui/api/reauth/begin", body: `{"task":"t1","approve":true}`}, 401, "unauthenticated"},
		{"unknown invite code", req{method: "POST", path: "/ui/api/enroll/begin", body: `{"code":"AAAA-BBBB"}`}, 404, "not_found"},
		{"malformed enroll", req{method: "POST", path: "/ui/api/enroll/begin", body: `{"code":`}, 400, "bad_request"},
		{"finish without a begin", req{method: "POST", path: "/ui/api/enroll/finish", body: `{}`}, 400, "bad_request"},
		{"login finish without a begin", req{method: "POST", path: "/ui/api/login/finish", body: `{}`}, 400, "bad_request"},
	} {
		got, _, body := ui.do(t, tc.r)
		if got != tc.want || (tc.code != "" && body["code"] != tc.code) {
			t.Errorf("%s: %d %v, want %d %s", tc.name, got, body, tc.want, tc.code)
		}
	}

	// A session downloads a snapshot with a plain GET (a link on the
	// cluster page).
	got, hdr, _ := ui.do(t, req{method: "GET", path: "/v1/snapshot", header: map[string]string{"Cookie": cookie(tok)}})
	if got != 200 || hdr.Get("Content-Type") != "application/octet-stream" {
		t.Fatalf("snapshot download by a session: %d %v", got, hdr)
	}

	// With the CSRF header the session may invite, and the invite names
	// the operator.
	// Sent again, an invite whose answer was lost is another invite (the
	// lost code expires unused).
	got, _, body, _ := ui.doAgain(t, req{method: "POST", path: "/v1/operators/invites", body: `{"name":"bob"}`,
		header: map[string]string{"Cookie": cookie(tok), "X-CSRF-Token": csrf}})
	if got != 201 || body["code"] == "" {
		t.Fatalf("invite by a session: %d %v", got, body)
	}
	code, _ := body["code"].(string)
	// The code begins an enrollment on any node, once per ceremony.
	other := startUI(t, c.Nodes[2])
	c.WaitApplied()
	got, hdr, body = other.do(t, req{method: "POST", path: "/ui/api/enroll/begin", body: `{"code":"` + strings.ToLower(code) + `"}`})
	if got != 200 || body["operator"] != "bob" || !strings.Contains(hdr.Get("Set-Cookie"), "__Host-mcpd_ceremony=") ||
		!strings.Contains(hdr.Get("Set-Cookie"), "HttpOnly") || !strings.Contains(hdr.Get("Set-Cookie"), "SameSite=Strict") {
		t.Fatalf("enroll begin: %d %v %v", got, body, hdr)
	}
	opts, _ := body["options"].(map[string]any)
	pk, _ := opts["publicKey"].(map[string]any)
	rp, _ := pk["rp"].(map[string]any)
	if rp["id"] != "localhost" || pk["challenge"] == "" {
		t.Fatalf("creation options: %v", opts)
	}
}

func TestSessionsAreClusterWide(t *testing.T) {
	c := testcluster.Start(t, 3, testcluster.Options{})
	uis := []uiNode{startUI(t, c.Nodes[0]), startUI(t, c.Nodes[1]), startUI(t, c.Nodes[2])}
	tok := session(t, c, "alice")
	for i, ui := range uis {
		got, _, body := ui.do(t, req{method: "GET", path: "/ui/api/session", header: map[string]string{"Cookie": cookie(tok)}})
		if got != 200 || body["operator"] != "alice" || body["csrf"] != operator.CSRFToken(tok) {
			t.Fatalf("node %d: session %d %v", i, got, body)
		}
	}
	// Logging out on one node ends the session on all of them.
	// A logout sent again after its answer was lost finds no session (401);
	// the checks below hold what it did.
	got, hdr, _, lost := uis[2].doAgain(t, req{method: "POST", path: "/ui/api/logout",
		header: map[string]string{"Cookie": cookie(tok), "X-CSRF-Token": operator.CSRFToken(tok)}})
	if !(lost && got == 401) && (got != 204 || !strings.Contains(hdr.Get("Set-Cookie"), "Max-Age=0")) {
		t.Fatalf("logout: %d %v", got, hdr)
	}
	c.WaitApplied()
	for i, ui := range uis {
		if got, _, _ := ui.do(t, req{method: "GET", path: "/v1/queues", header: map[string]string{"Cookie": cookie(tok)}}); got != 401 {
			t.Fatalf("node %d still honours the ended session: %d", i, got)
		}
	}
	// Removing an operator ends their sessions.
	tok2 := session(t, c, "carol")
	// A removal sent again after its answer was lost finds no carol (404);
	// the check below holds what it did.
	if got, _, body, lost := uis[0].doAgain(t, req{method: "DELETE", path: "/v1/operators/carol", header: map[string]string{"Authorization": "Bearer " + token}}); got != 204 && !(lost && got == 404) {
		t.Fatalf("remove: %d %v", got, body)
	}
	c.WaitApplied()
	if got, _, _ := uis[1].do(t, req{method: "GET", path: "/ui/api/session", header: map[string]string{"Cookie": cookie(tok2)}}); got != 401 {
		t.Fatalf("a removed operator's session: %d", got)
	}
}

func TestPagesAndHeaders(t *testing.T) {
	c := testcluster.Start(t, 1, testcluster.Options{})
	ui := startUI(t, c.Nodes[0])
	for _, path := range []string{"/ui/", "/ui/app.js", "/ui/pages.js", "/ui/style.css"} {
		got, hdr, _ := ui.do(t, req{method: "GET", path: path})
		if got != 200 || !strings.Contains(hdr.Get("Content-Security-Policy"), "frame-ancestors 'none'") || hdr.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s: %d %v", path, got, hdr)
		}
	}
	if got, _, _ := ui.do(t, req{method: "GET", path: "/ui/nope.js"}); got != 404 {
		t.Errorf("a missing file: %d", got)
	}
}

func TestConfig(t *testing.T) {
	c := testcluster.Start(t, 1, testcluster.Options{})
	admin := transport.NewAdmin(c.Nodes[0].Node, nil, nil)
	for name, cfg := range map[string]webui.Config{
		"no origin":         {},
		"plain http":        {Origins: []string{"http://localhost:4436"}},
		"outside the rp id": {Origins: []string{"https://a.example.com", "https://b.example.org"}},
		"rp id elsewhere":   {Origins: []string{"https://mcpd.example.com"}, RPID: "example.org"},
		"session too short": {Origins: []string{"https://localhost"}, SessionTTL: time.Second},
	} {
		if _, err := webui.New(c.Nodes[0].Node, admin, cfg, nil); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := webui.New(c.Nodes[0].Node, admin, webui.Config{Origins: []string{"https://n1.mcpd.example.com:4436", "https://n2.mcpd.example.com:4436"}, RPID: "mcpd.example.com"}, nil); err != nil {
		t.Errorf("nodes under one rp id: %v", err)
	}
}

// One host can hold at most 64 ceremonies in flight: a client looping on
// login/begin cannot fill the node's table and lock operators out.
func TestCeremoniesBoundedPerClient(t *testing.T) {
	c := testcluster.Start(t, 1, testcluster.Options{})
	ui := startUI(t, c.Nodes[0])
	var last http.Header
	for i := range 64 {
		got, hdr, _ := ui.do(t, req{method: "POST", path: "/ui/api/login/begin"})
		if got != 200 {
			t.Fatalf("begin %d: %d", i, got)
		}
		last = hdr
	}
	if got, _, body := ui.do(t, req{method: "POST", path: "/ui/api/login/begin"}); got != 429 || body["code"] != "rate_limited" {
		t.Fatalf("the 65th begin: %d %v", got, body)
	}
	// A finish spends its ceremony (here refused: the body is no
	// assertion), which frees the slot.
	ck := strings.SplitN(last.Get("Set-Cookie"), ";", 2)[0]
	if got, _, _ := ui.do(t, req{method: "POST", path: "/ui/api/login/finish", body: `{}`, header: map[string]string{"Cookie": ck}}); got != 401 {
		t.Fatalf("finish with a bad assertion: %d", got)
	}
	if got, _, _ := ui.do(t, req{method: "POST", path: "/ui/api/login/finish", body: `{}`, header: map[string]string{"Cookie": ck}}); got != 400 {
		t.Fatalf("the same ceremony twice: %d, want 400 (used once)", got)
	}
	if got, _, _ := ui.do(t, req{method: "POST", path: "/ui/api/login/begin"}); got != 200 {
		t.Fatalf("begin after a finish: %d", got)
	}
}
