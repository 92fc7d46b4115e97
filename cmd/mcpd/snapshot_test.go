package main

import (
	"bytes"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/mcpd/mcpd/audit"
	"github.com/mcpd/mcpd/cluster"
	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/internal/testcluster"
	"github.com/mcpd/mcpd/snapshot"
	"github.com/mcpd/mcpd/transport"
	bolt "go.etcd.io/bbolt"
)

// testSnapshotFile writes a snapshot file of a small state database
// (applied index 500, a queue, an audit chain of 5 entries).
func testSnapshotFile(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	body := filepath.Join(dir, "state.db")
	db, err := bolt.Open(body, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		meta, _ := tx.CreateBucket([]byte("meta"))
		var idx [16]byte
		binary.BigEndian.PutUint64(idx[:8], 500)
		binary.BigEndian.PutUint64(idx[8:], 3)
		meta.Put([]byte("applied"), idx[:])
		q, _ := tx.CreateBucket([]byte("queues"))
		q.Put([]byte("jobs"), []byte("x"))
		if err := audit.CreateBuckets(tx); err != nil {
			return err
		}
		for i := range 5 {
			if _, err := audit.Append(tx, audit.Event{Time: int64(i), Kind: "enqueue", Outcome: "ok"}); err != nil {
				return err
			}
		}
		return nil
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	h, err := snapshot.DescribeFile(body)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "s.snap")
	f, _ := os.Create(file)
	if err := snapshot.Write(f, &h, body); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return file
}

func TestSnapshotInspect(t *testing.T) {
	file := testSnapshotFile(t)
	var out bytes.Buffer
	if err := snapshotInspect([]string{file}, &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{"raft:       index 500, term 3", "audit head: seq 5", "checksum:   ok", "audit:      ok: 5 entries"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("inspect output lacks %q:\n%s", want, out.String())
		}
	}
	// Flags after the file are parsed too.
	out.Reset()
	if err := snapshotInspect([]string{file, "--json"}, &out); err != nil || !strings.Contains(out.String(), `"ok": true`) {
		t.Fatalf("inspect --json: %v\n%s", err, out.String())
	}
	raw, _ := os.ReadFile(file)
	bad := filepath.Join(t.TempDir(), "bad.snap")
	os.WriteFile(bad, raw[:len(raw)-10], 0o600)
	out.Reset()
	if err := snapshotInspect([]string{bad}, &out); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("inspect of a truncated file: %v", err)
	}
}

func TestSnapshotRestoreOffline(t *testing.T) {
	file := testSnapshotFile(t)
	// A directory with anything in it is refused and left alone.
	used := t.TempDir()
	os.WriteFile(filepath.Join(used, "keep"), []byte("x"), 0o600)
	var out bytes.Buffer
	if err := snapshotRestore([]string{file, "--data-dir", used}, &out); err == nil || !strings.Contains(err.Error(), "has data") {
		t.Fatalf("restore into a used directory: %v", err)
	}
	if ents, _ := os.ReadDir(used); len(ents) != 1 {
		t.Fatalf("the used directory was changed: %v", ents)
	}
	// A damaged file writes nothing.
	raw, _ := os.ReadFile(file)
	raw[len(raw)-1] ^= 1
	bad := filepath.Join(t.TempDir(), "bad.snap")
	os.WriteFile(bad, raw, 0o600)
	fresh := filepath.Join(t.TempDir(), "fresh")
	if err := snapshotRestore([]string{bad, "--data-dir", fresh}, &out); err == nil {
		t.Fatal("a damaged file was restored")
	}
	if _, err := os.Stat(fresh); err == nil {
		t.Fatal("a refused restore created the data directory")
	}
	// A good one makes a data directory that passes the node's checks:
	// a snapshot at the file's index and an empty, sound raft log.
	if err := snapshotRestore([]string{file, "--data-dir", fresh, "--node-id", "n7"}, &out); err != nil {
		t.Fatal(err)
	}
	r, err := cluster.CheckDataDir(fresh, cluster.CheckRaftDB)
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK || len(r.Snapshots) != 1 || r.Snapshots[0].Index != 500 || r.State != fsm.StateAbsent.String() {
		t.Fatalf("data directory check: %+v", r)
	}
	// Online restore needs a target.
	if err := snapshotRestore([]string{file}, &out); err == nil || !strings.Contains(err.Error(), "--admin-socket") {
		t.Fatalf("restore without a target: %v", err)
	}
}

// audit verify and export read a file of 'mcpd snapshot save' directly,
// after checking its body against the header.
func TestAuditOfSnapshotFile(t *testing.T) {
	file := testSnapshotFile(t)
	t.Setenv("TMPDIR", t.TempDir())
	var out bytes.Buffer
	if err := auditVerify([]string{"--snapshot", file}, &out); err != nil || !strings.Contains(out.String(), "5 entries") {
		t.Fatalf("audit verify --snapshot FILE: %v\n%s", err, out.String())
	}
	raw, _ := os.ReadFile(file)
	raw[len(raw)-100] ^= 0xff
	bad := filepath.Join(t.TempDir(), "bad.snap")
	os.WriteFile(bad, raw, 0o600)
	out.Reset()
	if err := auditVerify([]string{"--snapshot", bad}, &out); err == nil || !strings.Contains(err.Error(), "checksum mismatch") {
		t.Fatalf("audit verify of a damaged snapshot file: %v\n%s", err, out.String())
	}
	if left, _ := filepath.Glob(filepath.Join(os.TempDir(), "mcpd-audit-*")); len(left) != 0 {
		t.Fatalf("temporary copies left behind: %v", left)
	}
}

// mcpd snapshot restore sent to a follower's admin socket: the follower
// has the leader restore it, and the CLI says who did.
//
// The leader can change at any time (under load the test cluster's
// 300 ms timeouts let a stalled node lose its lease). A save or restore
// answered unavailable (nothing restored, or the outcome unknown:
// docs/ops/snapshots.md) is sent again, as is a restore that reached a
// node that led by then, to the socket of a node that follows then:
// nothing writes meanwhile, and Raft installs the file whole, so a
// second restore of it leaves the state the first one left.
func TestSnapshotRestoreThroughFollower(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node cluster")
	}
	cluster.RaftDBChecker = cluster.CheckRaftDB
	c := testcluster.Start(t, 3, testcluster.Options{})
	// Every node's admin API, on a socket of its own; a follower has the
	// other nodes' restore what it sends while they lead.
	socks := map[string]string{}
	for _, nd := range c.Nodes {
		sock := filepath.Join(t.TempDir(), "admin.sock")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: transport.NewAdmin(nd.Node, nil, slog.New(slog.DiscardHandler)).LocalHandler()}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		socks[nd.ID] = sock
	}
	again := func(err error) bool { return err != nil && strings.HasPrefix(err.Error(), "unavailable: ") }

	file := filepath.Join(t.TempDir(), "backup.snap")
	var out bytes.Buffer
	for attempt := 0; ; attempt++ {
		out.Reset()
		err := snapshotSave([]string{"-o", file, "--admin-socket", socks[c.Followers()[0].ID]}, &out, io.Discard)
		if again(err) && attempt < 10 {
			t.Logf("save: %v; again", err)
			continue
		}
		if err != nil {
			t.Fatalf("save: %v\n%s", err, out.String())
		}
		break
	}
	through := regexp.MustCompile(`by the leader (\S+) \(sent through (\S+)\)`)
	for attempt := 0; ; attempt++ {
		follower := c.Followers()[0]
		out.Reset()
		err := snapshotRestore([]string{file, "--admin-socket", socks[follower.ID]}, &out)
		if again(err) && attempt < 10 {
			t.Logf("restore through %s: %v; again", follower.ID, err)
			continue
		}
		if err != nil {
			t.Fatalf("restore through %s: %v\n%s", follower.ID, err, out.String())
		}
		led := strings.Contains(out.String(), "by the leader "+follower.ID+";") || strings.Contains(out.String(), "by the leader "+follower.ID+" (")
		if led && attempt < 10 {
			t.Logf("restore through %s: it led by then; again:\n%s", follower.ID, out.String())
			continue
		}
		m := through.FindStringSubmatch(out.String())
		if m == nil || m[2] != follower.ID || m[1] == follower.ID || socks[m[1]] == "" {
			t.Fatalf("restore output lacks \"by the leader L (sent through %s)\" with L another member:\n%s", follower.ID, out.String())
		}
		break
	}
	c.WaitConverged()
}

// The hint that ends an offline restore starts the node with the id and
// Raft address of the configuration it wrote: serve's own flags, parsed
// from the hint, give that id and that address (--bind and --raft-port).
func TestSnapshotRestoreOfflineStartHint(t *testing.T) {
	file := testSnapshotFile(t)
	for _, tc := range []struct {
		name string
		args []string
		id   string
		addr string
		dev  bool
	}{
		{"drill", []string{"--node-id", "d1", "--raft-addr", "127.0.0.1:17738"}, "d1", "127.0.0.1:17738", true},
		{"default", nil, "n1", "127.0.0.1:4438", true},
		{"member", []string{"--peers", "a=127.0.0.1:5001,b=127.0.0.2:5002", "--node-id", "b"}, "b", "127.0.0.2:5002", false},
	} {
		dir := filepath.Join(t.TempDir(), "restored dir")
		var out bytes.Buffer
		if err := snapshotRestore(append([]string{file, "--data-dir", dir}, tc.args...), &out); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		// The Raft configuration written holds the node at its address.
		snaps, err := raft.NewFileSnapshotStore(filepath.Join(dir, "raft"), 2, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		metas, err := snaps.List()
		if err != nil || len(metas) != 1 {
			t.Fatalf("%s: snapshots %v %v", tc.name, metas, err)
		}
		found := false
		for _, s := range metas[0].Configuration.Servers {
			found = found || (string(s.ID) == tc.id && string(s.Address) == tc.addr)
		}
		if !found {
			t.Fatalf("%s: configuration %+v has no %s at %s", tc.name, metas[0].Configuration, tc.id, tc.addr)
		}
		var lines []string
		for _, l := range strings.Split(out.String(), "\n") {
			if _, cmd, ok := strings.Cut(l, "mcpd serve "); ok {
				lines = append(lines, cmd)
			}
		}
		if len(lines) != 1 {
			t.Fatalf("%s: want one serve command in:\n%s", tc.name, out.String())
		}
		// The hint quotes the directory's space; unquote it for parsing.
		quoted := "'" + dir + "'"
		if !strings.Contains(lines[0], quoted) {
			t.Fatalf("%s: the directory is not quoted: %s", tc.name, lines[0])
		}
		args := strings.Fields(strings.Replace(lines[0], quoted, "DIR", 1))
		for i, a := range args {
			if a == "DIR" {
				args[i] = dir
			}
		}
		var f serveFlags
		fs := f.flagSet()
		fs.SetOutput(io.Discard)
		if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
			t.Fatalf("%s: serve %v: %v", tc.name, args, err)
		}
		raftBind := net.JoinHostPort(f.bind, strconv.Itoa(f.raftPort))
		if f.nodeID != tc.id || raftBind != tc.addr || f.dataDir != dir || f.dev != tc.dev {
			t.Fatalf("%s: serve %v: node %s, raft %s, data %s, dev %v", tc.name, args, f.nodeID, raftBind, f.dataDir, f.dev)
		}
		if !tc.dev {
			peers, err := cluster.ParsePeers(f.peers)
			if err != nil || peers[tc.id] != tc.addr {
				t.Fatalf("%s: --peers %q", tc.name, f.peers)
			}
		}
	}
}
