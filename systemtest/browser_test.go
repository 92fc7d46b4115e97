package systemtest

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/webauthn"
	"github.com/chromedp/chromedp"
	"github.com/mcpd/mcpd/client"
)

// The operators' web UI in a real browser: Debian's chromium, headless,
// driven over the DevTools protocol, with its virtual WebAuthn
// authenticator standing in for a passkey (docs/ops/ui.md). Screenshots of
// every step are kept in test-artifacts/browser/ at the repository root
// (MCPD_TEST_ARTIFACTS overrides the directory).

// chromium finds the browser; make deps installs Debian's package.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("the browser tests need chromium: install the Debian package chromium (make deps does)")
	return ""
}

// spkiHash is the base64 SHA-256 of the public key of the certificate
// addr serves, which chromium's --ignore-certificate-errors-spki-list
// takes: the browser then trusts that certificate as if its CA were
// installed, and WebAuthn, which refuses pages with certificate errors,
// works. The certificate is checked against the node's CA first.
func spkiHash(t *testing.T, addr, caFile string) string {
	t.Helper()
	raw, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(raw) {
		t.Fatalf("%s: no certificate", caFile)
	}
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, ServerName: "localhost"})
	if err != nil {
		t.Fatalf("TLS to the admin port: %v", err)
	}
	defer conn.Close()
	sum := sha256.Sum256(conn.ConnectionState().PeerCertificates[0].RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}

// artifactDir is where a test's screenshots go.
func artifactDir(t *testing.T, name string) string {
	t.Helper()
	dir := os.Getenv("MCPD_TEST_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join("..", "test-artifacts")
	}
	dir = filepath.Join(dir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// uiNode starts a dev node serving the UI on a free admin port.
func uiNode(t *testing.T) (dataDir, origin, wsURL, ca string) {
	bin := mcpdBinary(t)
	dir := t.TempDir()
	ports := freePorts(t, 4)
	dataDir = filepath.Join(dir, "data")
	origin = "https://localhost:" + strconv.Itoa(ports[3])
	p := &proc{name: "dev", bin: bin, logPath: filepath.Join(dir, "dev.log"), args: []string{"serve", "--dev",
		"--data-dir", dataDir, "--redis-port", "0", "--metrics-port", "0",
		"--port", strconv.Itoa(ports[0]), "--health-port", strconv.Itoa(ports[1]),
		"--raft-port", strconv.Itoa(ports[2]), "--admin-port", strconv.Itoa(ports[3]),
		"--ui-origin", origin,
	}}
	manage(t, p)
	p.start(t)
	waitReady(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1])), 20*time.Second)
	return dataDir, origin, fmt.Sprintf("wss://127.0.0.1:%d/v1", ports[0]), filepath.Join(dataDir, "tls", "ca.pem")
}

// browser is a headless chromium tab with a virtual authenticator.
type browser struct {
	t     *testing.T
	ctx   context.Context
	auth  webauthn.AuthenticatorID
	shots string
	n     int
}

func newBrowser(t *testing.T, origin, ca, shots string) *browser {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1360, 900),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("ignore-certificate-errors-spki-list", spkiHash(t, strings.TrimPrefix(origin, "https://"), ca)),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx)
	ctx, cancelTime := context.WithTimeout(ctx, 4*time.Minute)
	t.Cleanup(func() { cancelTime(); cancelTab(); cancelAlloc() })
	b := &browser{t: t, ctx: ctx, shots: shots}
	// The first action starts the browser, which lives as long as the
	// context it runs with: this one, not a step's.
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	if _, err := chromedp.Call(ctx, webauthn.Enable, webauthn.EnableParams{}); err != nil {
		t.Fatalf("WebAuthn.enable: %v", err)
	}
	res, err := chromedp.Call(ctx, webauthn.AddVirtualAuthenticator, webauthn.AddVirtualAuthenticatorParams{
		Options: &webauthn.VirtualAuthenticatorOptions{
			Protocol: webauthn.AuthenticatorProtocolCtap2, Ctap2version: webauthn.Ctap2versionCtap21,
			Transport: webauthn.AuthenticatorTransportInternal, HasResidentKey: true,
			HasUserVerification: true, IsUserVerified: true, AutomaticPresenceSimulation: true,
		}})
	if err != nil {
		t.Fatalf("WebAuthn.addVirtualAuthenticator: %v", err)
	}
	b.auth = res.AuthenticatorID
	return b
}

// stepTimeout bounds one step, so that a step that cannot happen fails
// the test with a screenshot instead of using up the whole test's time.
const stepTimeout = 45 * time.Second

func (b *browser) do(steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.shot("failed")
		b.t.Fatal(err)
	}
}

// fill sets an input's value as typing would (an input event follows).
func (b *browser) fill(sel, value string) {
	b.t.Helper()
	js := fmt.Sprintf(`(() => { const el = document.querySelector(%q); if (!el) return false; el.focus(); el.value = %q; el.dispatchEvent(new Event("input", {bubbles: true})); return true; })()`, sel, value)
	if !eval[bool](b, js) {
		b.shot("failed")
		b.t.Fatalf("no %s to fill", sel)
	}
}

// waitJS waits until a JavaScript expression is true.
func (b *browser) waitJS(what, expr string) {
	b.t.Helper()
	if _, err := chromedp.Run(b.ctx, chromedp.Poll[bool](expr, chromedp.WithPollingTimeout(30*time.Second))); err != nil {
		b.shot("failed")
		b.t.Fatalf("waiting for %s (%s): %v", what, expr, err)
	}
}

// eval runs an expression (a promise is awaited) and decodes its value.
func eval[T any](b *browser, expr string) T {
	b.t.Helper()
	v, err := chromedp.Run(b.ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// shot saves a screenshot of the whole page as the next numbered PNG.
func (b *browser) shot(name string) {
	b.n++
	png, err := chromedp.Run(b.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Logf("screenshot %s: %v", name, err)
		return
	}
	path := filepath.Join(b.shots, fmt.Sprintf("%02d-%s.png", b.n, name))
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Logf("screenshot %s: %v", name, err)
	}
}

func (b *browser) credentials() []*webauthn.Credential {
	b.t.Helper()
	res, err := chromedp.Call(b.ctx, webauthn.GetCredentials, webauthn.GetCredentialsParams{AuthenticatorID: b.auth})
	if err != nil {
		b.t.Fatalf("WebAuthn.getCredentials: %v", err)
	}
	return res.Credentials
}

// httpStatus is the HTTP status the page gets for a request it makes.
func httpStatus(b *browser, method, path, headers, body string) int {
	b.t.Helper()
	if headers == "" {
		headers = "{}"
	}
	opts := fmt.Sprintf(`{method: %q, headers: %s, credentials: "same-origin"}`, method, headers)
	if body != "" {
		opts = fmt.Sprintf(`{method: %q, headers: Object.assign({"Content-Type": "application/json"}, %s), body: %q, credentials: "same-origin"}`, method, headers, body)
	}
	return eval[int](b, fmt.Sprintf(`fetch(%q, %s).then(r => r.status)`, path, opts))
}

func Test_Browser_OperatorUI(t *testing.T) {
	dataDir, origin, wsURL, ca := uiNode(t)
	b := newBrowser(t, origin, ca, artifactDir(t, "browser"))
	cli := func(args ...string) string {
		t.Helper()
		out, stderr, err := mcpdOut(t, args...)
		if err != nil {
			t.Fatalf("mcpd %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr)
		}
		return out
	}

	// Without a session the pages offer a login, and the API answers
	// nothing.
	b.do(chromedp.Navigate(origin + "/ui/"))
	b.do(chromedp.WaitVisible("#login"))
	b.shot("login")
	if s := httpStatus(b, "GET", "/v1/queues", "", ""); s != 401 {
		t.Fatalf("GET /v1/queues without a session: %d, want 401", s)
	}
	if s := httpStatus(b, "POST", "/v1/operators/invites", "", `{"name":"mallory"}`); s != 401 {
		t.Fatalf("an invite without a session: %d, want 401", s)
	}

	// The first operator enrolls a passkey with the code the CLI printed.
	var inv struct {
		Code string `json:"code"`
	}
	if err := json.Unmarshal([]byte(cli("operator", "invite", "alice", "--data-dir", dataDir, "--json")), &inv); err != nil || inv.Code == "" {
		t.Fatalf("operator invite --json: %v", err)
	}
	b.do(chromedp.Navigate(origin+"/ui/#/enroll"), chromedp.WaitVisible("#invite-code"),
		chromedp.SendKeys("#invite-code", inv.Code), chromedp.Click("#enroll"))
	b.waitJS("the enrolled operator's pages", `document.querySelector("#who").textContent === "alice" && !document.querySelector("#nav").hidden`)
	b.waitJS("the cluster page", `document.querySelector("#leader") && document.querySelector("#leader").textContent === "n1"`)
	b.shot("enrolled")
	if n := len(b.credentials()); n != 1 {
		t.Fatalf("the authenticator holds %d passkeys after enrolling, want 1", n)
	}
	// The code was spent.
	if s := httpStatus(b, "POST", "/ui/api/enroll/begin", "", `{"code":"`+inv.Code+`"}`); s != 404 {
		t.Fatalf("the spent invite code began another enrollment: %d, want 404", s)
	}

	// Log out: the session ends on the server too. Log in again with the
	// passkey.
	b.do(chromedp.Click("#logout"), chromedp.WaitVisible("#login"))
	if s := httpStatus(b, "GET", "/v1/queues", "", ""); s != 401 {
		t.Fatalf("GET /v1/queues after logout: %d, want 401", s)
	}
	b.do(chromedp.Click("#login"))
	b.waitJS("the logged-in pages", `document.querySelector("#who").textContent === "alice"`)
	b.shot("logged-in")
	var ops struct {
		Operators []struct {
			Name     string `json:"name"`
			Passkeys []struct {
				SignCount uint32 `json:"sign_count"`
			} `json:"passkeys"`
		} `json:"operators"`
	}
	if err := json.Unmarshal([]byte(cli("operator", "list", "--data-dir", dataDir, "--json")), &ops); err != nil {
		t.Fatal(err)
	}
	creds := b.credentials()
	if len(ops.Operators) != 1 || len(ops.Operators[0].Passkeys) != 1 || float64(ops.Operators[0].Passkeys[0].SignCount) != creds[0].SignCount || creds[0].SignCount < 1 {
		t.Fatalf("the stored passkey counter does not follow the authenticator's (%v): %+v", creds[0].SignCount, ops)
	}

	// A queue's depth follows enqueues.
	b.do(chromedp.Navigate(origin + "/ui/#/queues"))
	b.waitJS("the queues page", `document.querySelector("h1") && document.querySelector("h1").textContent === "Queues"`)
	cli("send", "--server", wsURL, "--ca", ca, "--queue", "jobs", "--body", `{"n":1}`)
	b.waitJS("jobs at depth 1", `document.querySelector('tr[data-queue="jobs"] .depth')?.textContent === "1"`)
	cli("send", "--server", wsURL, "--ca", ca, "--queue", "jobs", "--body", `{"n":2}`, "--count", "2")
	b.waitJS("jobs at depth 3", `document.querySelector('tr[data-queue="jobs"] .depth')?.textContent === "3"`)
	b.shot("queue-depth")

	// A dead letter: its reason, its delivery timeline, its redrive.
	cctx, cancel := context.WithTimeout(b.ctx, time.Minute)
	defer cancel()
	cl, err := client.Dial(cctx, client.Options{URLs: []string{wsURL}, Agent: "reporter", CAFile: ca})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Enqueue(cctx, "reports", map[string]any{"week": 48}); err != nil {
		t.Fatal(err)
	}
	cons, err := cl.Consume(cctx, "reports", client.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d, err := cons.Next(cctx)
	if err != nil || d.Nack(cctx, 0) != nil {
		t.Fatalf("first delivery: %v", err)
	}
	if d, err = cons.Next(cctx); err != nil || d.Attempt != 2 || d.Reject(cctx, "malformed report") != nil {
		t.Fatalf("second delivery: %+v %v", d, err)
	}
	cl.Close() // no consumer takes the message once it is redriven
	b.do(chromedp.Navigate(origin + "/ui/#/queues/reports.dlq"))
	deadRow := `tr[data-seq="1"]`
	b.waitJS("the dead letter", fmt.Sprintf(`document.querySelector('%s')?.textContent.includes("rejected: malformed report")`, deadRow))
	b.do(chromedp.Click(deadRow + " button.timeline"))
	b.waitJS("its timeline", `document.querySelectorAll('[data-timeline="1"] li').length >= 4 && document.querySelector(".timeline-row").textContent.includes("reject by reporter")`)
	b.shot("dead-letter-timeline")
	b.do(chromedp.Click(deadRow+` input[type="checkbox"]`), chromedp.Click("#redrive-selected"))
	b.waitJS("the redrive", `document.querySelector("#flash").textContent.startsWith("Redrove 1") && document.querySelector('tr[data-seq="1"]') === null`)
	var back []struct {
		State    string `json:"state"`
		Attempts int    `json:"attempts"`
	}
	out := cli("queue", "peek", "reports", "--data-dir", dataDir, "--json")
	if err := json.Unmarshal([]byte(out), &back); err != nil || len(back) != 1 || back[0].State != "ready" || back[0].Attempts != 0 {
		t.Fatalf("the redriven message: %v\n%s", err, out)
	}

	// A task held for approval: the session alone cannot approve it, the
	// passkey asked again can.
	spec := filepath.Join(t.TempDir(), "graph.json")
	if err := os.WriteFile(spec, []byte(`{"intent":"publish the weekly report","tasks":[
		{"ref":"draft","capability":"write","input":{"topic":"weekly"}},
		{"ref":"review","capability":"review","input":{"by":"editor"},"deps":["draft"]},
		{"ref":"publish","capability":"publish","input":{"where":"site"},"approval":true}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	var sub struct {
		Root string            `json:"root"`
		IDs  map[string]string `json:"ids"`
	}
	if err := json.Unmarshal([]byte(cli("task", "submit", spec, "--server", wsURL, "--ca", ca, "--agent", "planner", "--json")), &sub); err != nil {
		t.Fatal(err)
	}
	held := sub.IDs["publish"]
	b.do(chromedp.Navigate(origin + "/ui/#/tasks"))
	b.waitJS("the held task", fmt.Sprintf(`document.querySelector('tr[data-held=%q]') !== null`, held))
	b.shot("approval-held")
	csrf := eval[string](b, `fetch("/ui/api/session").then(r => r.json()).then(s => s.csrf)`)
	if s := httpStatus(b, "POST", "/v1/tasks/"+held+"/approve", fmt.Sprintf(`{"X-CSRF-Token": %q}`, csrf), `{}`); s != 403 {
		t.Fatalf("approve through the API with only a session: %d, want 403", s)
	}
	if s := httpStatus(b, "POST", "/v1/tasks/"+held+"/cancel", "", `{}`); s != 403 {
		t.Fatalf("a state change without the CSRF header: %d, want 403", s)
	}
	b.do(chromedp.Click(fmt.Sprintf(`tr[data-held=%q] button.approve`, held)))
	b.waitJS("the approval to land", fmt.Sprintf(`document.querySelector('tr[data-held=%q]') === null && document.querySelector("#flash").textContent.startsWith("Approved")`, held))
	b.shot("approved")
	var got struct {
		Task struct {
			State   string `json:"state"`
			History []struct {
				Event  string `json:"event"`
				Agent  string `json:"agent"`
				Detail string `json:"detail"`
			} `json:"history"`
		} `json:"task"`
	}
	if err := json.Unmarshal([]byte(cli("task", "show", held, "--data-dir", dataDir, "--json")), &got); err != nil {
		t.Fatal(err)
	}
	if got.Task.State == "held" || !strings.Contains(fmt.Sprint(got.Task.History), "operator:alice") {
		t.Fatalf("the approved task: %+v", got.Task)
	}

	// A denial needs a reason, and asks for the passkey too.
	var sub2 struct {
		IDs map[string]string `json:"ids"`
	}
	spec2 := filepath.Join(t.TempDir(), "graph2.json")
	if err := os.WriteFile(spec2, []byte(`{"intent":"wipe the archive","tasks":[{"ref":"wipe","capability":"wipe","input":{},"approval":true}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(cli("task", "submit", spec2, "--server", wsURL, "--ca", ca, "--agent", "planner", "--json")), &sub2); err != nil {
		t.Fatal(err)
	}
	denied := sub2.IDs["wipe"]
	row := fmt.Sprintf(`tr[data-held=%q]`, denied)
	b.waitJS("the second held task", fmt.Sprintf(`document.querySelector('%s') !== null`, row))
	b.do(chromedp.Click(row + " button.deny"))
	b.waitJS("the refusal of a denial without a reason", `document.querySelector("#flash").textContent.startsWith("Say why")`)
	// The reason is filled in one step of the page's own script: the page
	// refreshes every two seconds until an input has the focus, and keys
	// typed between a refresh and the focus would go to a replaced field.
	b.fill(row+" input.reason", "not this week")
	b.do(chromedp.Click(row + " button.deny"))
	b.waitJS("the denial to land", fmt.Sprintf(`document.querySelector('%s') === null && document.querySelector("#flash").textContent.startsWith("Denied")`, row))
	out = cli("task", "show", denied, "--data-dir", dataDir, "--json")
	if !strings.Contains(out, "not this week") || !strings.Contains(out, "operator:alice") || strings.Contains(out, `"state": "held"`) {
		t.Fatalf("the denied task:\n%s", out)
	}

	// The graph's page draws the DAG; the audit page verifies the chain.
	b.do(chromedp.Navigate(origin + "/ui/#/tasks/" + sub.Root))
	b.waitJS("the DAG", `document.querySelectorAll("svg.dag g[data-task]").length === 3 && document.querySelectorAll("svg.dag path").length === 1`)
	b.shot("graph")
	b.do(chromedp.Navigate(origin+"/ui/#/audit"), chromedp.WaitVisible("#verify"), chromedp.Click("#verify"))
	b.waitJS("the audit verification", `document.querySelector("#verify-result")?.textContent.includes("intact")`)
	b.waitJS("the operator's approval in the log", `[...document.querySelectorAll("tr")].some(r => r.textContent.includes("task.approve") && r.textContent.includes("operator:alice"))`)
	b.shot("audit")

	// The other pages render what the cluster holds.
	cli("schedule", "add", "standup", "--cron", "30 9 * * 1-5", "--tz", "Europe/Paris", "--task", "report.daily", "--data-dir", dataDir)
	b.do(chromedp.Navigate(origin + "/ui/#/schedules"))
	b.waitJS("the schedule", `[...document.querySelectorAll("td")].some(td => td.textContent === "standup")`)
	b.shot("schedules")
	b.do(chromedp.Navigate(origin + "/ui/#/agents"))
	b.waitJS("the agents page", `document.querySelector("h1")?.textContent === "Agents" && document.querySelector("h2")?.textContent === "Identities"`)
	b.do(chromedp.Navigate(origin + "/ui/#/cluster"))
	b.waitJS("the cluster page", `document.querySelector("#leader")?.textContent === "n1" && document.querySelector("#snapshot") !== null`)
	b.shot("cluster")
	// A logged-in operator invites the next one.
	b.do(chromedp.Navigate(origin+"/ui/#/operators"), chromedp.WaitVisible("#invite-name"),
		chromedp.SendKeys("#invite-name", "bob"), chromedp.Click("#invite"))
	b.waitJS("bob's code", `document.querySelector(".card b.code")?.textContent.length === 29`)
	b.shot("operators")
	if out := cli("operator", "list", "--data-dir", dataDir); !strings.Contains(out, "bob") || !strings.Contains(out, "operator:alice") {
		t.Fatalf("the invite made in the UI:\n%s", out)
	}
}
