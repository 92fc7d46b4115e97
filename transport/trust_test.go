package transport_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/mcpd/mcpd/audit"
	"github.com/mcpd/mcpd/auth"
	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/internal/testcluster"
	"github.com/mcpd/mcpd/transport"
)

// secure is a cluster without dev authentication, with the admin API of
// every node.
type secure struct {
	t   *testing.T
	c   *testcluster.Cluster
	key *auth.ClusterKey
}

func startSecure(t *testing.T, n int) *secure {
	t.Helper()
	c := testcluster.Start(t, n, testcluster.Options{Secure: true})
	return &secure{t: t, c: c, key: c.Key}
}

// adminCall sends a JSON request to node i's admin API and returns the
// status and the decoded body.
func (s *secure) adminCall(i int, method, path string, body any) (int, map[string]any) {
	s.t.Helper()
	var rd *bytes.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	} else {
		rd = bytes.NewReader(nil)
	}
	req, _ := http.NewRequest(method, s.c.Nodes[i].AdminURL()+path, rd)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// addAgent adds an agent through node 0's admin API and returns its key.
func (s *secure) addAgent(name, alg string, acl auth.ACL, limits auth.Limits) auth.Key {
	s.t.Helper()
	return s.c.AddAgent(name, alg, acl, limits)
}

// signedConn is an authenticated connection that signs its envelopes.
type signedConn struct {
	*rawConn
	key auth.Key
}

// authFrame answers the hello of rc as agent with key.
func authFrame(t *testing.T, rc *rawConn, agent string, key auth.Key) string {
	t.Helper()
	sig, err := auth.SignChallenge(rc.hello.str("nonce"), agent, key)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf(`{"op":"auth","rid":1,"agent":%q,"alg":%q,"sig":%q}`, agent, key.Alg, sig)
}

func (s *secure) login(node int, agent string, key auth.Key) *signedConn {
	s.t.Helper()
	rc := dialRaw(s.t, s.c, s.c.Nodes[node].URL)
	rc.sendText(authFrame(s.t, rc, agent, key))
	if f := rc.next(isReply(json.RawMessage("1"))); f.op() != "ok" || f.str("agent") != agent {
		s.t.Fatalf("auth as %s on node %d: %s", agent, node, f)
	}
	rc.agent = agent
	return &signedConn{rawConn: rc, key: key}
}

// signed returns a signed envelope from the connection's agent.
func (sc *signedConn) signed(body string) string {
	sc.t.Helper()
	b, err := auth.SignEnvelope([]byte(env(sc.agent, body)), sc.agent, sc.key)
	if err != nil {
		sc.t.Fatal(err)
	}
	return string(b)
}

func TestAuthHandshake(t *testing.T) {
	s := startSecure(t, 1)
	edKey := s.addAgent("cipher", auth.AlgEd25519, auth.ACL{}, auth.Limits{})
	hmKey := s.addAgent("legacy", auth.AlgHMACSHA256, auth.ACL{}, auth.Limits{})
	url := s.c.Nodes[0].URL

	s.login(0, "cipher", edKey).ping()
	s.login(0, "legacy", hmKey).ping()

	_, otherPriv, _ := ed25519.GenerateKey(rand.Reader)
	other := auth.Key{Alg: auth.AlgEd25519, Public: otherPriv.Public().(ed25519.PublicKey), Signer: otherPriv}
	cases := []struct {
		name, code string
		frame      func(rc *rawConn) string
	}{
		{"wrong ed25519 key", "bad_signature", func(rc *rawConn) string { return authFrame(t, rc, "cipher", other) }},
		{"wrong hmac secret", "bad_signature", func(rc *rawConn) string {
			return authFrame(t, rc, "legacy", auth.Key{Alg: auth.AlgHMACSHA256, Secret: bytes.Repeat([]byte{1}, 32)})
		}},
		{"another nonce", "bad_signature", func(rc *rawConn) string {
			sig, _ := auth.SignChallenge("AAAA", "cipher", edKey)
			return fmt.Sprintf(`{"op":"auth","rid":1,"agent":"cipher","alg":"ed25519","sig":%q}`, sig)
		}},
		{"unknown agent", "unauthenticated", func(rc *rawConn) string { return authFrame(t, rc, "ghost", other) }},
		{"alg none outside dev", "unauthenticated", func(rc *rawConn) string {
			return `{"op":"auth","rid":1,"agent":"cipher","alg":"none"}`
		}},
		{"other alg than the identity", "unauthenticated", func(rc *rawConn) string {
			return authFrame(t, rc, "cipher", auth.Key{Alg: auth.AlgHMACSHA256, Secret: bytes.Repeat([]byte{1}, 32)})
		}},
		{"missing sig", "bad_request", func(rc *rawConn) string {
			return `{"op":"auth","rid":1,"agent":"cipher","alg":"ed25519"}`
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rc := dialRaw(t, s.c, url)
			rc.sendText(tc.frame(rc))
			wantErr(t, rc.next(isReply(json.RawMessage("1"))), tc.code)
			// The connection stays unauthenticated, and can still log in.
			rc.callErr("unauthenticated", "ping", "")
			rc.sendText(strings.Replace(authFrame(t, rc, "cipher", edKey), `"rid":1`, `"rid":2`, 1))
			if f := rc.next(isReply(json.RawMessage("2"))); f.op() != "ok" {
				t.Fatalf("auth after a failure: %s", f)
			}
		})
	}
}

func TestSignedEnvelopes(t *testing.T) {
	s := startSecure(t, 1)
	key := s.addAgent("cipher", auth.AlgEd25519, auth.ACL{Enqueue: []string{"*"}, Consume: []string{"*"}, Publish: []string{"*"}}, auth.Limits{})
	sc := s.login(0, "cipher", key)

	good := sc.signed(`{"n":1}`)
	if seq := sc.enqueue("jobs", good, ""); seq != 1 {
		t.Fatalf("seq %d", seq)
	}
	tampered := strings.Replace(sc.signed(`{"n":2}`), `"n":2`, `"n":3`, 1)
	unsigned := env("cipher", `{"n":4}`)
	noneSig := strings.TrimSuffix(env("cipher", `{"n":5}`), "}") + `,"sig":{"alg":"none","kid":"cipher"}}`
	otherKid := func() string {
		b, _ := auth.SignEnvelope([]byte(env("cipher", `{"n":6}`)), "editor", key)
		return string(b)
	}()
	stale := func() string {
		e := fmt.Sprintf(`{"id":%q,"from":"cipher","ts":%d,"body":1}`, newID(), time.Now().Add(-time.Hour).UnixMilli())
		b, _ := auth.SignEnvelope([]byte(e), "cipher", key)
		return string(b)
	}()
	foreign := func() string {
		b, _ := auth.SignEnvelope([]byte(env("editor", `1`)), "editor", key)
		return string(b)
	}()
	for _, tc := range []struct{ name, msg, code string }{
		{"tampered body", tampered, "bad_signature"},
		{"unsigned", unsigned, "bad_signature"},
		{"alg none", noneSig, "bad_signature"},
		{"kid of another agent", otherKid, "bad_signature"},
		{"ts an hour old", stale, "replay"},
		{"from another agent", foreign, "forbidden"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc.callErr(tc.code, "enqueue", `"queue":"jobs","msg":`+tc.msg)
			sc.callErr(tc.code, "publish", `"topic":"news","msg":`+tc.msg)
		})
	}
	if got := sc.info("jobs"); got[0] != 1 {
		t.Fatalf("ready after refused envelopes = %d, want 1", got[0])
	}
	// The consumer gets the envelope byte for byte, and can verify it.
	sc.consume("jobs", "")
	d := sc.next(func(f frame) bool { return f.op() == "deliver" })
	e, err := auth.ParseEnvelope(d["msg"])
	if err != nil || string(d["msg"]) != good {
		t.Fatalf("delivered %s, want %s (%v)", d["msg"], good, err)
	}
	if err := auth.VerifyEnvelope(e, auth.Key{Alg: auth.AlgEd25519, Public: key.Public}); err != nil {
		t.Fatalf("delivered envelope does not verify: %v", err)
	}
}

func TestACL(t *testing.T) {
	s := startSecure(t, 1)
	key := s.addAgent("cipher", auth.AlgEd25519, auth.ACL{
		Enqueue:   []string{"jobs.*"},
		Consume:   []string{"results"},
		Publish:   []string{"alerts.*"},
		Subscribe: []string{"rhythm.*"},
		Send:      []string{"editor"},
	}, auth.Limits{})
	sc := s.login(0, "cipher", key)

	sc.enqueue("jobs.firmware", sc.signed(`1`), "")
	sc.callErr("forbidden", "enqueue", `"queue":"other","msg":`+sc.signed(`1`))
	sc.callErr("forbidden", "enqueue", `"queue":"jobs","msg":`+sc.signed(`1`))
	sc.consume("results", "")
	sc.callErr("forbidden", "consume", `"queue":"jobs.firmware"`)
	sc.consume("@cipher", "") // its own inbox needs no grant
	sc.ok("publish", `"topic":"alerts.disk","msg":`+sc.signed(`1`))
	sc.callErr("forbidden", "publish", `"topic":"rhythm.sync","msg":`+sc.signed(`1`))
	sc.ok("subscribe", `"topic":"rhythm.*"`)
	// A glob '*' spans dots: rhythm.* grants every topic below rhythm.
	sc.ok("subscribe", `"topic":"rhythm.>"`)
	sc.callErr("forbidden", "subscribe", `"topic":"*.sync"`)
	sc.callErr("forbidden", "subscribe", `"topic":"alerts.disk"`)
	sc.ok("send", `"to":"editor","msg":`+sc.signed(`1`))
	sc.callErr("forbidden", "send", `"to":"boss","msg":`+sc.signed(`1`))
	sc.ok("queue.declare", `"queue":"jobs.firmware","max_attempts":3`)
	sc.callErr("forbidden", "queue.declare", `"queue":"jobs.firmware","dlq":"elsewhere"`)
	sc.callErr("forbidden", "queue.declare", `"queue":"other"`)
	sc.callErr("forbidden", "queue.info", `"queue":"other"`)
	sc.info("results")

	// Nothing was created by the denied requests.
	rc := s.login(0, "cipher", key)
	if got := rc.info("jobs.firmware"); got[0] != 1 {
		t.Fatalf("jobs.firmware ready = %d, want 1", got[0])
	}
}

func TestRateLimit(t *testing.T) {
	s := startSecure(t, 1)
	key := s.addAgent("chatty", auth.AlgEd25519, auth.ACL{Enqueue: []string{"*"}}, auth.Limits{MsgsPerSec: 3})
	start := time.Now()
	// The limit is the agent's on this node, shared by its connections.
	a, b := s.login(0, "chatty", key), s.login(0, "chatty", key)
	passed := 0
	for i := range 40 {
		sc := a
		if i%2 == 1 {
			sc = b
		}
		f := sc.call("ping", "")
		if f.op() == "ok" {
			passed++
			continue
		}
		wantErr(t, f, "rate_limited")
	}
	// A full bucket of 3, then 3 per second.
	allowed := 3 + int(3*time.Since(start).Seconds()) + 1
	if passed < 3 || passed > allowed {
		t.Fatalf("%d of 40 requests passed in %v; a limit of 3/s allows 3 to %d", passed, time.Since(start), allowed)
	}
	// The connection stays usable once the bucket refills.
	testcluster.WaitFor(t, waitTime, func() bool { return a.call("ping", "").op() == "ok" })
}

func TestRevokeClosesConnectionsEverywhere(t *testing.T) {
	s := startSecure(t, 3)
	key := s.addAgent("cipher", auth.AlgEd25519, auth.ACL{Enqueue: []string{"*"}}, auth.Limits{})
	editorKey := s.addAgent("editor", auth.AlgEd25519, auth.ACL{}, auth.Limits{})
	conns := make([]*signedConn, 3)
	for i := range conns {
		// Each node applies the add on its own schedule.
		testcluster.WaitFor(t, waitTime, func() bool {
			rc := dialRaw(t, s.c, s.c.Nodes[i].URL)
			defer rc.ws.Close()
			rc.sendText(authFrame(t, rc, "cipher", key))
			return rc.next(isReply(json.RawMessage("1"))).op() == "ok"
		})
		conns[i] = s.login(i, "cipher", key)
	}
	// A 503 (no leader in time, or the leader changed while it
	// committed, as a stalled process can make it) has the revoke sent
	// again: revoking a revoked agent keeps its record as it is.
	st, out := s.adminCall(1, "POST", "/v1/agents/cipher/revoke", map[string]string{"reason": "key leaked"})
	for attempt := 0; st == http.StatusServiceUnavailable && attempt < 10; attempt++ {
		t.Logf("revoke: %d %v; again", st, out)
		st, out = s.adminCall(1, "POST", "/v1/agents/cipher/revoke", map[string]string{"reason": "key leaked"})
	}
	if st != http.StatusOK {
		t.Fatalf("revoke: %d %v", st, out)
	}
	for i, sc := range conns {
		for {
			if _, err := sc.readWithin(waitTime); err != nil {
				break
			}
		}
		if sc.closed == nil || sc.closed.Code != transport.CloseRevoked {
			t.Fatalf("node %d: connection not closed with %d: %v", i, transport.CloseRevoked, sc.closed)
		}
	}
	// A revoked agent cannot log in again, anywhere.
	for i := range s.c.Nodes {
		rc := dialRaw(t, s.c, s.c.Nodes[i].URL)
		rc.sendText(authFrame(t, rc, "cipher", key))
		wantErr(t, rc.next(isReply(json.RawMessage("1"))), "unauthenticated")
	}
	// The record says who revoked it and why; the name cannot be reused.
	st, rec := s.adminCall(2, "GET", "/v1/agents/cipher", nil)
	if st != http.StatusOK || rec["revoked"] == nil || rec["revoke_reason"] != "key leaked" || rec["revoked_by"] != "operator:local" {
		t.Fatalf("revoked record: %d %v", st, rec)
	}
	readd := func() int {
		st, _ := s.adminCall(0, "POST", "/v1/agents", transport.AdminAgentRequest{Name: "cipher", Alg: "ed25519", PublicKey: key.Public})
		return st
	}
	st = readd()
	for attempt := 0; st == http.StatusServiceUnavailable && attempt < 10; attempt++ {
		st = readd() // refused whatever became of the attempt before
	}
	if st != http.StatusConflict {
		t.Fatalf("re-adding a revoked name: %d, want 409", st)
	}
	// Other agents are untouched.
	s.login(2, "editor", editorKey).ping()
}

func TestAdminAPI(t *testing.T) {
	s := startSecure(t, 1)
	s.addAgent("cipher", auth.AlgEd25519, auth.ACL{Enqueue: []string{"jobs.*"}}, auth.Limits{MsgsPerSec: 10})
	s.addAgent("legacy", auth.AlgHMACSHA256, auth.ACL{}, auth.Limits{})
	st, out := s.adminCall(0, "GET", "/v1/agents", nil)
	if st != http.StatusOK {
		t.Fatalf("list: %d %v", st, out)
	}
	list, _ := json.Marshal(out)
	if !strings.Contains(string(list), `"cipher"`) || !strings.Contains(string(list), `"legacy"`) {
		t.Fatalf("list: %s", list)
	}
	// The HMAC secret never comes back, sealed or not.
	if strings.Contains(string(list), "secret") || strings.Contains(string(list), "sealed") {
		t.Fatalf("list shows secret material: %s", list)
	}
	for _, tc := range []struct {
		body any
		want int
	}{
		{transport.AdminAgentRequest{Name: "cipher", Alg: "ed25519", PublicKey: make([]byte, 32)}, http.StatusConflict},
		{transport.AdminAgentRequest{Name: "bad name", Alg: "ed25519", PublicKey: make([]byte, 32)}, http.StatusBadRequest},
		{transport.AdminAgentRequest{Name: "x", Alg: "ed25519", PublicKey: make([]byte, 31)}, http.StatusBadRequest},
		{transport.AdminAgentRequest{Name: "x", Alg: "hmac-sha256", Secret: make([]byte, 8)}, http.StatusBadRequest},
		{transport.AdminAgentRequest{Name: "x", Alg: "rsa"}, http.StatusBadRequest},
		{transport.AdminAgentRequest{Name: "x", Alg: "ed25519", PublicKey: make([]byte, 32), ACL: auth.ACL{Enqueue: []string{"[a-"}}}, http.StatusBadRequest},
		{map[string]any{"name": "x", "alg": "ed25519", "surprise": 1}, http.StatusBadRequest},
	} {
		if st, out := s.adminCall(0, "POST", "/v1/agents", tc.body); st != tc.want {
			t.Errorf("add %+v: %d %v, want %d", tc.body, st, out, tc.want)
		}
	}
	if st, _ := s.adminCall(0, "GET", "/v1/agents/x", nil); st != http.StatusNotFound {
		t.Fatalf("no agent x was to be added: %d", st)
	}
	// A name in use says so, and a revoked one that it is not used again.
	again := transport.AdminAgentRequest{Name: "legacy", Alg: "ed25519", PublicKey: make([]byte, 32)}
	if st, out := s.adminCall(0, "POST", "/v1/agents", again); st != http.StatusConflict || out["error"] != "agent already exists: legacy" {
		t.Fatalf("add legacy again: %d %v", st, out)
	}
	if st, out := s.adminCall(0, "POST", "/v1/agents/legacy/revoke", nil); st != http.StatusOK {
		t.Fatalf("revoke legacy: %d %v", st, out)
	}
	if st, out := s.adminCall(0, "POST", "/v1/agents", again); st != http.StatusConflict || !strings.Contains(fmt.Sprint(out["error"]), "legacy was revoked") {
		t.Fatalf("add the revoked legacy again: %d %v", st, out)
	}
	if st, _ := s.adminCall(0, "POST", "/v1/agents/ghost/revoke", nil); st != http.StatusNotFound {
		t.Fatalf("revoke unknown: %d", st)
	}
	// The token endpoint refuses requests without the token.
	srv := httptest.NewServer(transport.NewAdmin(s.c.Nodes[0].Node, s.key, slog.New(slog.DiscardHandler)).TokenHandler("0123456789abcdef"))
	defer srv.Close()
	for _, h := range []string{"", "Bearer wrong", "Bearer 0123456789abcdef"} {
		req, _ := http.NewRequest("GET", srv.URL+"/v1/agents", nil)
		if h != "" {
			req.Header.Set("Authorization", h)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		want := http.StatusUnauthorized
		if h == "Bearer 0123456789abcdef" {
			want = http.StatusOK
		}
		if resp.StatusCode != want {
			t.Errorf("Authorization %q: %d, want %d", h, resp.StatusCode, want)
		}
	}
}

// auditRecords fetches node i's audit entries through the admin API,
// after committing what it applied.
func (s *secure) auditRecords(i int) []audit.Record {
	s.t.Helper()
	s.c.Nodes[i].Node.FSM().Flush()
	resp, err := http.Get(s.c.Nodes[i].AdminURL() + "/v1/audit/entries?after=0&limit=10000")
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		s.t.Fatalf("audit entries: %s", resp.Status)
	}
	var out []audit.Record
	dec := json.NewDecoder(resp.Body)
	for dec.More() {
		var r audit.Record
		if err := dec.Decode(&r); err != nil {
			s.t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

// findAudit returns the first record matching kind, actor and outcome.
func findAudit(recs []audit.Record, kind, actor, outcome string) *audit.Record {
	for i := range recs {
		r := &recs[i]
		if r.Kind == kind && r.Actor == actor && r.Outcome == outcome {
			return r
		}
	}
	return nil
}

// Every identity change and every auth decision is an entry of the
// chain; the admin API serves, verifies and publishes it.
func TestAuditOfTrustDecisions(t *testing.T) {
	s := startSecure(t, 1)
	key := s.addAgent("cipher", auth.AlgEd25519, auth.ACL{Enqueue: []string{"jobs"}}, auth.Limits{})
	sc := s.login(0, "cipher", key)
	sc.enqueue("jobs", sc.signed(`1`), "")
	sc.callErr("forbidden", "enqueue", `"queue":"payroll","msg":`+sc.signed(`1`))
	sc.callErr("bad_signature", "enqueue", `"queue":"jobs","msg":`+env("cipher", `1`))
	rc := dialRaw(t, s.c, s.c.Nodes[0].URL)
	rc.sendText(`{"op":"auth","rid":1,"agent":"cipher","alg":"ed25519","sig":"AAAA"}`)
	wantErr(t, rc.next(isReply(json.RawMessage("1"))), "bad_signature")
	if st, _ := s.adminCall(0, "POST", "/v1/agents/cipher/revoke", map[string]string{"reason": "test"}); st != http.StatusOK {
		t.Fatalf("revoke: %d", st)
	}

	want := []struct{ kind, actor, subject, outcome string }{
		{"agent.add", "operator:local", "cipher", "ok"},
		{"auth.ok", "cipher", "", "ok"},
		{"enqueue", "cipher", "jobs", "ok"},
		{"denied", "cipher", "enqueue payroll", "forbidden"},
		{"bad_signature", "cipher", "", "bad_signature"},
		{"auth.fail", "cipher", "", "bad_signature"},
		{"agent.revoke", "operator:local", "cipher", "ok"},
	}
	var recs []audit.Record
	testcluster.WaitFor(t, waitTime, func() bool {
		recs = s.auditRecords(0)
		for _, w := range want {
			if findAudit(recs, w.kind, w.actor, w.outcome) == nil {
				return false
			}
		}
		return true
	})
	for _, w := range want {
		r := findAudit(recs, w.kind, w.actor, w.outcome)
		if w.subject != "" && r.Subject != w.subject {
			t.Errorf("%s entry: subject %q, want %q", w.kind, r.Subject, w.subject)
		}
	}
	// The entries form a chain that verifies here, from the export alone.
	c := audit.NewChain(nil)
	for i := range recs {
		if !c.Add(&recs[i]) {
			t.Fatalf("exported chain: %v", c.Report())
		}
	}
	// The node's own verification agrees, with the cluster's key.
	st, rep := s.adminCall(0, "GET", "/v1/audit/verify", nil)
	if st != http.StatusOK || rep["ok"] != true || rep["entries"].(float64) < float64(len(recs)) {
		t.Fatalf("verify: %d %v", st, rep)
	}
	st, k := s.adminCall(0, "GET", "/v1/audit/key", nil)
	if st != http.StatusOK || k["public_key"] != audit.FormatPublicKey(s.key.AuditPublicKey()) {
		t.Fatalf("audit key: %d %v", st, k)
	}
	for _, q := range []string{"after=x", "limit=0", "limit=10001"} {
		if st, _ := s.adminCall(0, "GET", "/v1/audit/entries?"+q, nil); st != http.StatusBadRequest {
			t.Errorf("entries?%s: %d, want 400", q, st)
		}
	}
}

// An hmac-sha256 secret sealed under another cluster's key (a node given
// the wrong --cluster-key-file) does not open: the agent is refused with
// unauthenticated, and the secret is never compared.
func TestHMACUnderAnotherClusterKey(t *testing.T) {
	s := startSecure(t, 1)
	other, err := auth.NewClusterKey(bytes.Repeat([]byte{9}, 32))
	if err != nil {
		t.Fatal(err)
	}
	secret := bytes.Repeat([]byte{7}, 32)
	sealed, err := other.Seal("legacy", secret)
	if err != nil {
		t.Fatal(err)
	}
	rec := auth.Agent{Name: "legacy", Alg: auth.AlgHMACSHA256, Sealed: sealed, SealKey: other.ID()}
	ctx, cancel := context.WithTimeout(context.Background(), waitTime)
	defer cancel()
	rep, err := s.c.Nodes[0].Node.Call(ctx, fsm.TypeAgentAdd, "operator:test", &fsm.AgentAddArgs{Agent: rec})
	if err != nil || rep.Err != nil {
		t.Fatalf("add: %v %v", err, rep)
	}
	rc := dialRaw(t, s.c, s.c.Nodes[0].URL)
	rc.sendText(authFrame(t, rc, "legacy", auth.Key{Alg: auth.AlgHMACSHA256, Secret: secret}))
	f := rc.next(isReply(json.RawMessage("1")))
	wantErr(t, f, "unauthenticated")
	if !strings.Contains(f.str("msg"), "cannot check") {
		t.Fatalf("message %q does not say the node cannot check the agent", f.str("msg"))
	}
}

// A connection that keeps failing the handshake is closed: guessing costs
// a new connection (and a new challenge) every few attempts.
func TestRepeatedAuthFailuresClose(t *testing.T) {
	s := startSecure(t, 1)
	s.addAgent("cipher", auth.AlgEd25519, auth.ACL{}, auth.Limits{})
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	wrong := auth.Key{Alg: auth.AlgEd25519, Public: priv.Public().(ed25519.PublicKey), Signer: priv}
	rc := dialRaw(t, s.c, s.c.Nodes[0].URL)
	for i := 1; i <= 3; i++ {
		rc.sendText(strings.Replace(authFrame(t, rc, "cipher", wrong), `"rid":1`, fmt.Sprintf(`"rid":%d`, i), 1))
		wantErr(t, rc.next(isReply(json.RawMessage(fmt.Sprint(i)))), "bad_signature")
	}
	for {
		if _, err := rc.readWithin(waitTime); err != nil {
			break
		}
	}
	if rc.closed == nil || rc.closed.Code != transport.CloseAuthTimeout {
		t.Fatalf("after 3 failed attempts: closed %v, want %d", rc.closed, transport.CloseAuthTimeout)
	}
}
