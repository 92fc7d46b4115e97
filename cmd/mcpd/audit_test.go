package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mcpd/mcpd/audit"
	"github.com/mcpd/mcpd/cluster"
	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/queue"
	bolt "go.etcd.io/bbolt"
)

// auditFixture is the data directory of a stopped one-node cluster whose
// audit log holds a few commands, one refused (an ack of "ghost/7", a
// subject no other record of state.db contains), and one checkpoint
// signed by key, and which has a snapshot.
type auditFixture struct {
	dir      string // do not modify: copy it (copyDataDir)
	key      ed25519.PrivateKey
	head     audit.Head
	snapshot string // its directory
}

func mustAuditFixture(t *testing.T) auditFixture {
	t.Helper()
	fx, err := makeAuditFixture(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return fx
}

func makeAuditFixture(dir string) (fx auditFixture, err error) {
	fx.dir = dir
	fx.key = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{5}, ed25519.SeedSize))
	// The node checks raft.db in this process, not in a child (check.go).
	cluster.RaftDBChecker = cluster.CheckRaftDB
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fx, err
	}
	node, err := cluster.New(cluster.Config{NodeID: "n1", DataDir: fx.dir, RaftListener: ln,
		HeartbeatTimeout: 200 * time.Millisecond, ElectionTimeout: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return fx, err
	}
	defer func() {
		if serr := node.Shutdown(); err == nil {
			err = serr
		}
	}()
	for deadline := time.Now().Add(10 * time.Second); !node.IsLeader(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			return fx, errors.New("the node did not become leader")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	submit := func(t fsm.MessageType, body any) error {
		cmd, err := fsm.NewCommand(t, "", 0, body)
		if err == nil {
			err = node.Submit(ctx, cmd)
		}
		return err
	}
	if err := submit(fsm.TypeDeclare, &queue.DeclareArgs{Queue: "jobs"}); err != nil {
		return fx, err
	}
	for i := range 3 {
		env := []byte(fmt.Sprintf(`{"id":"m%d"}`, i))
		if err := submit(fsm.TypeEnqueue, &queue.EnqueueArgs{Queue: "jobs", From: "alice", ID: fmt.Sprintf("m%d", i), Env: env, Hash: sha256.Sum256(env)}); err != nil {
			return fx, err
		}
	}
	if err := submit(fsm.TypeAck, &queue.SettleArgs{Queue: "ghost", Seq: 7, Attempt: 1, Conn: "n1/1/1"}); err != nil {
		return fx, err
	}
	if err := node.Raft().Barrier(10 * time.Second).Error(); err != nil {
		return fx, err
	}
	head, err := node.FSM().AuditHead()
	if err != nil {
		return fx, err
	}
	cp, err := fsm.NewAuditCheckpoint(audit.Sign(fx.key, head))
	if err == nil {
		err = node.Submit(ctx, cp)
	}
	if err != nil {
		return fx, err
	}
	if err := node.Raft().Barrier(10 * time.Second).Error(); err != nil {
		return fx, err
	}
	if fx.head, err = node.FSM().AuditHead(); err != nil {
		return fx, err
	}
	if err := node.Raft().Snapshot().Error(); err != nil {
		return fx, err
	}
	snaps, err := cluster.CheckSnapshots(filepath.Join(fx.dir, "raft", "snapshots"))
	if err != nil || len(snaps) == 0 {
		return fx, fmt.Errorf("no snapshot (%v)", err)
	}
	fx.snapshot = filepath.Join(fx.dir, "raft", "snapshots", snaps[0].ID)
	return fx, nil
}

// copyStateDB copies the fixture's state.db into a new data directory.
func copyStateDB(t *testing.T, fx auditFixture) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(fx.dir, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "state.db"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Test_Audit_Main is not a test of its own: runMcpd runs the test binary
// through it as "mcpd ARGS...", to see main's output and exit status.
func Test_Audit_Main(t *testing.T) {
	args := os.Getenv("MCPD_AUDIT_TEST_ARGS")
	if args == "" {
		t.Skip("runs main for runMcpd")
	}
	os.Args = append([]string{"mcpd"}, strings.Split(args, "\n")...)
	main()
	os.Exit(0)
}

func runMcpd(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^Test_Audit_Main$")
	cmd.Env = append(os.Environ(), "MCPD_AUDIT_TEST_ARGS="+strings.Join(args, "\n"))
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		code = exit.ExitCode()
	default:
		t.Fatal(err)
	}
	return out.String(), errOut.String(), code
}

func Test_Audit_Verify_DataDirSnapshotAndKeys(t *testing.T) {
	fx := mustAuditFixture(t)
	pub := fx.key.Public().(ed25519.PublicKey)
	pemFile := filepath.Join(t.TempDir(), "audit.pem")
	pemKey, err := audit.PublicKeyPEM(pub)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pemFile, pemKey, 0o600); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("ok: %d entries, head %x, 1 checkpoints\n", fx.head.Seq, fx.head.Hash)
	for _, args := range [][]string{
		{"--data-dir", fx.dir, "--key", audit.FormatPublicKey(pub)},
		{"--data-dir", fx.dir, "--key", pemFile},
		{"--snapshot", fx.snapshot, "--key", audit.FormatPublicKey(pub)},
		{"--snapshot", filepath.Join(fx.snapshot, "state.bin"), "--key", audit.FormatPublicKey(pub)},
	} {
		var out bytes.Buffer
		if err := auditVerify(args, &out); err != nil || out.String() != want {
			t.Fatalf("verify %v: %q (%v), want %q", args, out.String(), err, want)
		}
	}
	// Without a key the verdict says what it could not check.
	var out bytes.Buffer
	if err := auditVerify([]string{"--data-dir", fx.dir}, &out); err != nil || !strings.Contains(out.String(), "pass the cluster's audit key") {
		t.Fatalf("verify without a key: %q (%v)", out.String(), err)
	}
	// Another key did not sign the checkpoint.
	other := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{6}, ed25519.SeedSize)).Public().(ed25519.PublicKey)
	stdout, _, code := runMcpd(t, "audit", "verify", "--data-dir", fx.dir, "--key", audit.FormatPublicKey(other))
	if code != 1 || !strings.HasPrefix(stdout, "broken at seq ") || !strings.Contains(stdout, ": bad checkpoint signature: ") {
		t.Fatalf("verify with another key: exit %d, %q", code, stdout)
	}
}

// An entry changed on disk, by editing the bytes of state.db, is named by
// its seq, with exit status 1.
func Test_Audit_Verify_TamperedDataDir(t *testing.T) {
	fx := mustAuditFixture(t)
	dir := copyStateDB(t, fx)
	// Find the refused ack's entry.
	var export bytes.Buffer
	if err := auditExport([]string{"--data-dir", dir}, &export); err != nil {
		t.Fatal(err)
	}
	var seq uint64
	sc := bufio.NewScanner(&export)
	for sc.Scan() {
		var r audit.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		if r.Subject == "ghost/7" {
			if r.Kind != "ack" || r.Outcome != "not_found" {
				t.Fatalf("the refused ack's entry: %+v", r)
			}
			seq = r.Seq
		}
	}
	if seq == 0 {
		t.Fatal("no entry for the ack of ghost/7")
	}
	// Rewrite "ghost/7" as "ghost/8" wherever it is: the live page and any
	// older copy bbolt left in free pages.
	path := filepath.Join(dir, "state.db")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Count(b, []byte("ghost/7")) == 0 {
		t.Fatal("ghost/7 is not in state.db")
	}
	if err := os.WriteFile(path, bytes.ReplaceAll(b, []byte("ghost/7"), []byte("ghost/8")), 0o600); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, code := runMcpd(t, "audit", "verify", "--data-dir", dir)
	if wantOut := fmt.Sprintf("broken at seq %d: changed: ", seq); code != 1 || !strings.HasPrefix(stdout, wantOut) {
		t.Fatalf("exit %d, stdout %q, stderr %q; want exit 1 and %q", code, stdout, stderr, wantOut)
	}
	if !strings.Contains(stderr, errAuditBroken.Error()) {
		t.Fatalf("stderr %q", stderr)
	}
}

// A running node holds state.db's lock: verify says so at once instead of
// waiting.
func Test_Audit_Verify_LockedDataDir(t *testing.T) {
	fx := mustAuditFixture(t)
	dir := copyStateDB(t, fx)
	db, err := bolt.Open(filepath.Join(dir, "state.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	start := time.Now()
	_, stderr, code := runMcpd(t, "audit", "verify", "--data-dir", dir)
	if code != 1 || !strings.Contains(stderr, "the node is running") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("took %v", took)
	}
}

func Test_Audit_Export_Since(t *testing.T) {
	fx := mustAuditFixture(t)
	var out bytes.Buffer
	if err := auditExport([]string{"--snapshot", fx.snapshot, "--since", "2"}, &out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if uint64(len(lines)) != fx.head.Seq-2 {
		t.Fatalf("%d lines after seq 2, head %d", len(lines), fx.head.Seq)
	}
	var first, last audit.Record
	if json.Unmarshal([]byte(lines[0]), &first) != nil || json.Unmarshal([]byte(lines[len(lines)-1]), &last) != nil {
		t.Fatalf("lines %q", lines)
	}
	if first.Seq != 3 || last.Seq != fx.head.Seq || last.Hash != fx.head.Hash || last.Kind != audit.KindCheckpoint || last.Checkpoint == nil {
		t.Fatalf("first %+v, last %+v", first, last)
	}
	// The export verifies on its own, from seq 3.
	file := filepath.Join(t.TempDir(), "audit.jsonl")
	if err := os.WriteFile(file, out.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	var rep bytes.Buffer
	pub := audit.FormatPublicKey(fx.key.Public().(ed25519.PublicKey))
	want := fmt.Sprintf("ok: %d entries from seq 3 (its prev taken on trust), head %x, 1 checkpoints\n", fx.head.Seq-2, fx.head.Hash)
	if err := auditVerify([]string{"--export", file, "--key", pub}, &rep); err != nil || rep.String() != want {
		t.Fatalf("verify the export: %q (%v), want %q", rep.String(), err, want)
	}
	// One changed field in it is found.
	changed := bytes.Replace(out.Bytes(), []byte(`"actor":""`), []byte(`"actor":"x"`), 1)
	if err := os.WriteFile(file, changed, 0o600); err != nil {
		t.Fatal(err)
	}
	rep.Reset()
	if err := auditVerify([]string{"--export", file}, &rep); !errors.Is(err, errAuditBroken) || !strings.Contains(rep.String(), ": changed: ") {
		t.Fatalf("verify a changed export: %q (%v)", rep.String(), err)
	}
}

func Test_Audit_UsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"frobnicate"},
		{"verify", "--data-dir", "a", "--snapshot", "b"},
		{"verify", "--data-dir", "a", "--export", "b"},
		{"verify", "--key", "not a key"},
		{"verify", "extra"},
		{"export", "--since", "-1"},
		{"key"},
	} {
		var ue *usageError
		if err := runAudit(args); !errors.As(err, &ue) {
			t.Errorf("%q: %v, want a usage error", args, err)
		}
	}
	_, stderr, code := runMcpd(t, "audit", "verify", "--data-dir", "a", "--snapshot", "b")
	if code != 2 || !strings.Contains(stderr, "not both") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}
