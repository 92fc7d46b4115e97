package systemtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mcpd/mcpd/auth"
	"github.com/mcpd/mcpd/client"
)

// mcpdOut runs the binary and returns its stdout, stderr and error.
func mcpdOut(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	cmd := exec.Command(mcpdBinary(t), args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

// The operator's agent commands against a dev node, through its admin
// socket: add prints the credential once and writes it 0600, the
// credential works with the Go client, the ACL holds, revoke ends it.
func Test_Trust_AgentCLI(t *testing.T) {
	p, dataDir, health, url := devNode(t)
	p.start(t)
	waitReady(t, health, 20*time.Second)
	ca := filepath.Join(dataDir, "tls", "ca.pem")
	dir := t.TempDir()
	cred := filepath.Join(dir, "cipher.cred")

	if fi, err := os.Stat(filepath.Join(dataDir, "admin.sock")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin socket: %v, mode %v", err, fi.Mode())
	}
	out, stderr, err := mcpdOut(t, "agent", "add", "cipher", "--data-dir", dataDir, "--out", cred,
		"--cap", "ghidra.decompile", "--allow-enqueue", "jobs.*", "--allow-consume", "jobs.*")
	if err != nil {
		t.Fatalf("agent add: %v\n%s", err, stderr)
	}
	written, err := os.ReadFile(cred)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(cred); fi.Mode().Perm() != 0o600 {
		t.Fatalf("credential file mode %v, want 0600", fi.Mode().Perm())
	}
	if strings.TrimSpace(out) != strings.TrimSpace(string(written)) {
		t.Fatalf("printed credential %q differs from the file %q", out, written)
	}
	agent, key, err := auth.ParseCredential(written)
	if err != nil || agent != "cipher" || key.Alg != auth.AlgEd25519 {
		t.Fatalf("credential: %s %+v %v", agent, key.Alg, err)
	}

	// A taken --out path fails before the agent exists.
	if _, _, err := mcpdOut(t, "agent", "add", "other", "--data-dir", dataDir, "--out", cred); err == nil {
		t.Fatal("agent add over an existing credential file succeeded")
	}
	if _, _, err := mcpdOut(t, "agent", "show", "other", "--data-dir", dataDir); err == nil {
		t.Fatal("agent other exists after its add failed")
	}

	// show: the public key, never a private one.
	out, stderr, err = mcpdOut(t, "agent", "show", "cipher", "--data-dir", dataDir)
	if err != nil {
		t.Fatalf("agent show: %v\n%s", err, stderr)
	}
	var shown map[string]any
	if err := json.Unmarshal([]byte(out), &shown); err != nil || shown["name"] != "cipher" || shown["public_key"] == nil {
		t.Fatalf("agent show: %s (%v)", out, err)
	}
	if strings.Contains(out, "private") || strings.Contains(out, string(key.Signer.Seed())) {
		t.Fatalf("agent show reveals private material: %s", out)
	}

	// An hmac-sha256 agent: the dev node sealed its secret under the
	// cluster key it created; the secret is nowhere in state.db.
	hcred := filepath.Join(dir, "legacy.cred")
	if _, stderr, err := mcpdOut(t, "agent", "add", "legacy", "--alg", "hmac-sha256", "--data-dir", dataDir, "--out", hcred); err != nil {
		t.Fatalf("agent add hmac: %v\n%s", err, stderr)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	signer, err := client.LoadCredentials(cred)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := client.Dial(ctx, client.Options{URLs: []string{url}, Agent: "cipher", CAFile: ca, Signer: signer})
	if err != nil {
		t.Fatalf("dial with the credential: %v", err)
	}
	defer cl.Close()
	if _, err := cl.Enqueue(ctx, "jobs.firmware", map[string]string{"target": "device_x"}); err != nil {
		t.Fatalf("enqueue allowed by the ACL: %v", err)
	}
	if _, err := cl.Enqueue(ctx, "payroll", 1); !client.IsCode(err, "forbidden") {
		t.Fatalf("enqueue outside the ACL: %v, want forbidden", err)
	}
	hsigner, err := client.LoadCredentials(hcred)
	if err != nil {
		t.Fatal(err)
	}
	// Neither the Raft log nor state.db holds the secret in clear; both
	// hold the record (so the files looked at are the right ones).
	for _, f := range []string{filepath.Join("raft", "raft.db"), "state.db"} {
		path := filepath.Join(dataDir, f)
		waitFor(t, 10*time.Second, "the hmac agent in "+f, func() error {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			if bytes.Contains(b, hsigner.Key.Secret) {
				t.Fatalf("%s holds the hmac secret in clear", f)
			}
			if !bytes.Contains(b, []byte("legacy")) {
				return errorString("no record of legacy yet")
			}
			return nil
		})
	}
	hcl, err := client.Dial(ctx, client.Options{URLs: []string{url}, Agent: "legacy", CAFile: ca, Signer: hsigner})
	if err != nil {
		t.Fatalf("dial with the hmac credential: %v", err)
	}
	if _, err := hcl.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	hcl.Close()

	// The CLI tools sign with a credential too.
	if out, stderr, err := mcpdOut(t, "send", "--server", url, "--ca", ca, "--cred", cred, "--queue", "jobs.cli", "--body", `{"n":1}`); err != nil || strings.TrimSpace(out) != "1" {
		t.Fatalf("send --cred: %v %q\n%s", err, out, stderr)
	}
	if _, _, err := mcpdOut(t, "send", "--server", url, "--ca", ca, "--cred", cred, "--queue", "payroll", "--body", `1`); err == nil {
		t.Fatal("send --cred outside the ACL succeeded")
	}
	out, _, err = mcpdOut(t, "agent", "list", "--data-dir", dataDir)
	if err != nil || !strings.Contains(out, "cipher") || !strings.Contains(out, "legacy") || !strings.Contains(out, "active") {
		t.Fatalf("agent list: %v\n%s", err, out)
	}

	// audit tail follows the log: an identity change shows up in it.
	tail := exec.Command(mcpdBinary(t), "audit", "tail", "--data-dir", dataDir, "--poll", "100ms")
	tailOut, err := tail.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := tail.Start(); err != nil {
		t.Fatal(err)
	}
	defer tail.Process.Kill()
	lines := make(chan string, 1024)
	go func() {
		sc := bufio.NewScanner(tailOut)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	if out, stderr, err := mcpdOut(t, "agent", "revoke", "cipher", "--reason", "rotated", "--data-dir", dataDir); err != nil {
		t.Fatalf("agent revoke: %v\n%s%s", err, out, stderr)
	}
	for seen := false; !seen; {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("audit tail ended")
			}
			var rec map[string]any
			if err := json.Unmarshal([]byte(l), &rec); err != nil {
				t.Fatalf("audit tail printed %q: %v", l, err)
			}
			seen = rec["kind"] == "agent.revoke" && rec["subject"] == "cipher" && rec["actor"] == "operator:local"
		case <-time.After(20 * time.Second):
			t.Fatal("the revocation did not show in audit tail")
		}
	}
	if err := tail.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	if err := tail.Wait(); err != nil {
		t.Fatalf("audit tail after SIGINT: %v", err)
	}
	// The live client is cut off and cannot come back.
	waitFor(t, 20*time.Second, "the revoked client to fail", func() error {
		pctx, pcancel := context.WithTimeout(ctx, time.Second)
		defer pcancel()
		if _, err := cl.Ping(pctx); err == nil {
			return errorString("ping still works")
		}
		return nil
	})
	if _, err := client.Dial(ctx, client.Options{URLs: []string{url}, Agent: "cipher", CAFile: ca, Signer: signer}); !client.IsCode(err, "unauthenticated") {
		t.Fatalf("dial after revoke: %v, want unauthenticated", err)
	}
	// The running node's log verifies from the operator's side, with the
	// key the dev node's cluster key gives.
	auditKey, _, err := mcpdOut(t, "audit", "key", "--cluster-key-file", filepath.Join(dataDir, "cluster.key"))
	if err != nil {
		t.Fatal(err)
	}
	if out, stderr, err := mcpdOut(t, "audit", "verify", "--node", "--data-dir", dataDir, "--key", strings.TrimSpace(auditKey)); err != nil || !strings.HasPrefix(out, "ok: ") {
		t.Fatalf("audit verify --node: %v %s %s", err, out, stderr)
	}
	out, _, _ = mcpdOut(t, "agent", "list", "--data-dir", dataDir)
	if !strings.Contains(out, "revoked") {
		t.Fatalf("agent list after revoke: %s", out)
	}
}

type errorString string

func (e errorString) Error() string { return string(e) }

// The admin API over HTTPS on the admin port, for an operator with the
// token: the same agent commands, and nothing without the token.
func Test_Trust_RemoteAdmin(t *testing.T) {
	bin := mcpdBinary(t)
	dir := t.TempDir()
	ports := freePorts(t, 4)
	dataDir := filepath.Join(dir, "data")
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte("s3cret-operator-token-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	wrong := filepath.Join(dir, "wrong")
	if err := os.WriteFile(wrong, []byte("not-the-operator-token-000000000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &proc{name: "dev", bin: bin, logPath: filepath.Join(dir, "dev.log"), args: []string{"serve", "--dev",
		"--data-dir", dataDir, "--redis-port", "0", "--metrics-port", "0",
		"--port", strconv.Itoa(ports[0]), "--health-port", strconv.Itoa(ports[1]),
		"--raft-port", strconv.Itoa(ports[2]), "--admin-port", strconv.Itoa(ports[3]),
		"--admin-token-file", token,
	}}
	manage(t, p)
	p.start(t)
	waitReady(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1])), 20*time.Second)
	remote := func(tok string, args ...string) (string, string, error) {
		return mcpdOut(t, append(args, "--admin-url", "https://127.0.0.1:"+strconv.Itoa(ports[3]),
			"--admin-token-file", tok, "--ca", filepath.Join(dataDir, "tls", "ca.pem"))...)
	}
	if _, stderr, err := remote(token, "agent", "add", "far", "--allow-publish", "news.*"); err != nil {
		t.Fatalf("remote agent add: %v\n%s", err, stderr)
	}
	out, stderr, err := remote(token, "agent", "show", "far")
	if err != nil || !strings.Contains(out, `"created_by": "operator:token"`) {
		t.Fatalf("remote agent show: %v\n%s%s", err, out, stderr)
	}
	if _, stderr, err := remote(wrong, "agent", "list"); err == nil || !strings.Contains(stderr, "unauthenticated") {
		t.Fatalf("agent list with a wrong token: %v\n%s", err, stderr)
	}
	if _, _, err := remote(wrong, "agent", "revoke", "far"); err == nil {
		t.Fatal("revoke with a wrong token succeeded")
	}
	out, _, err = remote(token, "agent", "list")
	if err != nil || !strings.Contains(out, "active") {
		t.Fatalf("far was revoked by a wrong token: %v\n%s", err, out)
	}
}
