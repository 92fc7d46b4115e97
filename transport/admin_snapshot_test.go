package transport_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mcpd/mcpd/audit"
	"github.com/mcpd/mcpd/client"
	"github.com/mcpd/mcpd/internal/testcluster"
	"github.com/mcpd/mcpd/snapshot"
	"github.com/mcpd/mcpd/transport"
	bolt "go.etcd.io/bbolt"
)

// The buckets whose contents a restore must bring back exactly: queues,
// messages and their bodies, ready lists, timers (delays and lease ends),
// leases per connection, consumers, identities, tasks, schedules.
var restoredBuckets = []string{"queues", "msgs", "bodies", "ready", "timers", "byconn", "consumers", "qconsumers",
	"counters", "agents", "task.tasks", "sched.defs"}

// bucketSums is a SHA-256 of each of restoredBuckets' keys and values.
func bucketSums(tx *bolt.Tx) map[string]string {
	out := map[string]string{}
	for _, name := range restoredBuckets {
		h := sha256.New()
		if b := tx.Bucket([]byte(name)); b != nil {
			_ = b.ForEach(func(k, v []byte) error {
				fmt.Fprintf(h, "%x=%x\n", k, v)
				return nil
			})
		}
		out[name] = hex.EncodeToString(h.Sum(nil))
	}
	return out
}

// countPrefix counts the keys of bucket that start with prefix.
func countPrefix(tx *bolt.Tx, bucket, prefix string) int {
	n := 0
	c := tx.Bucket([]byte(bucket)).Cursor()
	for k, _ := c.Seek([]byte(prefix)); k != nil && bytes.HasPrefix(k, []byte(prefix)); k, _ = c.Next() {
		n++
	}
	return n
}

// snapshotAdmin serves node's admin API (as on its unix socket).
func snapshotAdmin(t *testing.T, nd *testcluster.Node) string {
	srv := httptest.NewServer(transport.NewAdmin(nd.Node, nil, nil).LocalHandler())
	t.Cleanup(srv.Close)
	return srv.URL
}

// saveSnapshot fetches a snapshot file from an admin API into dir. A
// save records an audit entry through Raft: a leader change while it
// commits (a stalled process) answers 503, and the save is asked again.
func saveSnapshot(t *testing.T, url, dir string) string {
	t.Helper()
	resp, err := http.Get(url + "/v1/snapshot")
	for attempt := 0; err == nil && resp.StatusCode == http.StatusServiceUnavailable && attempt < 10; attempt++ {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Logf("GET /v1/snapshot: %s %s; again", resp.Status, b)
		resp, err = http.Get(url + "/v1/snapshot")
	}
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /v1/snapshot: %s %s", resp.Status, b)
	}
	path := filepath.Join(dir, "backup.snap")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// postRestore uploads a file and returns the status and the answer.
func postRestore(t *testing.T, url string, body []byte) (int, []byte) {
	t.Helper()
	resp, err := http.Post(url+"/v1/snapshot/restore", "application/octet-stream", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

// fileState reads the body of a snapshot file: its bucket sums and the
// number of messages in queue live.
func fileState(t *testing.T, path string) (map[string]string, int) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_, off, err := snapshot.ReadHeader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	body := filepath.Join(t.TempDir(), "body.db")
	if err := os.WriteFile(body, raw[off:], 0o600); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(body, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var sums map[string]string
	var live int
	_ = db.View(func(tx *bolt.Tx) error {
		sums = bucketSums(tx)
		live = countPrefix(tx, "msgs", "live\x00")
		return nil
	})
	return sums, live
}

// nodeSums is the bucket sums of every running node.
func nodeSums(c *testcluster.Cluster) map[string]map[string]string {
	out := map[string]map[string]string{}
	for _, nd := range c.Nodes {
		if nd.Stopped() {
			continue
		}
		_ = nd.Node.FSM().View(func(tx *bolt.Tx) error { out[nd.ID] = bucketSums(tx); return nil })
	}
	return out
}

// checkRestored compares every running node of c with the snapshot: the same
// messages, leases and other records, an audit chain that verifies and
// holds the snapshot's head, followed by the restore's own entry.
func checkRestored(t *testing.T, c *testcluster.Cluster, h *snapshot.Header, want map[string]string) {
	t.Helper()
	c.WaitConverged()
	for _, nd := range c.Nodes {
		if nd.Stopped() {
			continue
		}
		err := nd.Node.FSM().View(func(tx *bolt.Tx) error {
			got := bucketSums(tx)
			for _, name := range restoredBuckets {
				if got[name] != want[name] {
					t.Errorf("%s: bucket %s differs from the snapshot's", nd.ID, name)
				}
			}
			rep, err := audit.Verify(tx, nil)
			if err != nil || !rep.OK {
				t.Errorf("%s: audit verify: %v %v", nd.ID, rep, err)
			}
			e, ok, err := audit.Get(tx, h.AuditHead.Seq)
			if err != nil || !ok || hex.EncodeToString(e.Hash[:]) != h.AuditHead.Hash {
				t.Errorf("%s: audit entry %d is not the snapshot's head %s (%v %v)", nd.ID, h.AuditHead.Seq, h.AuditHead.Hash, ok, err)
			}
			// The restore's own entry follows (after any command that
			// was applied between the install and it).
			found := false
			for seq := h.AuditHead.Seq + 1; seq <= h.AuditHead.Seq+5 && !found; seq++ {
				e, ok, err := audit.Get(tx, seq)
				found = err == nil && ok && e.Kind == "snapshot.restore"
			}
			if !found {
				t.Errorf("%s: no snapshot.restore entry after the head", nd.ID)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// A snapshot saved from a follower while clients enqueue holds every
// message acknowledged before the request, and the leases of a consumer;
// restored into the same cluster after its queue was drained, and into a
// new cluster whose log is far behind the snapshot's index, every node
// comes back with exactly the saved messages, leases and audit head. The
// first restore is sent to a follower, which has the leader restore it.
// A damaged or truncated upload, to a follower or the leader, changes
// nothing.
func TestSnapshotSaveRestore3Nodes(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two 3-node clusters")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := testcluster.Start(t, 3, testcluster.Options{})
	w := c.Dial("writer")
	const n = 500
	for i := range n {
		if _, err := w.Enqueue(ctx, "jobs", map[string]int{"i": i}); err != nil {
			t.Fatal(err)
		}
	}
	// 20 deliveries leased for an hour and not settled.
	wk := c.Dial("worker")
	k, err := wk.Consume(ctx, "jobs", client.ConsumeOptions{Prefetch: 20, LeaseMs: 3_600_000})
	if err != nil {
		t.Fatal(err)
	}
	var leased []*client.Delivery
	for range 20 {
		d, err := k.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		leased = append(leased, d)
	}
	// Ingest goes on while the snapshot is taken.
	var acked atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		lw := c.Dial("live")
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := lw.Enqueue(ctx, "live", map[string]int{"i": i}); err != nil {
				t.Errorf("live enqueue: %v", err)
				return
			}
			acked.Add(1)
		}
	}()
	testcluster.WaitFor(t, 10*time.Second, func() bool { return acked.Load() >= 50 })
	before := acked.Load()
	follower := c.Followers()[0]
	file := saveSnapshot(t, snapshotAdmin(t, follower), t.TempDir())
	close(stop)
	wg.Wait()

	res, err := snapshot.Check(file, t.TempDir(), nil, "")
	if err != nil {
		t.Fatal(err)
	}
	h := res.Header
	want, live := fileState(t, file)
	if h.Counts.Messages < n+int(before) || h.Counts.Leases != 20 || live < int(before) {
		t.Fatalf("snapshot counts %+v, %d live messages; want at least %d messages (%d live acknowledged before the save) and 20 leases",
			h.Counts, live, n+int(before), before)
	}
	if h.Node != follower.ID {
		t.Fatalf("snapshot taken on %q, asked %q", h.Node, follower.ID)
	}

	// Wipe the queue's state: settle the leased deliveries, take the rest.
	// The client sends an ack again when its outcome was unknown (a
	// leader change while it committed): if the first one was applied,
	// the second is not_found. Nothing else can be (an hour's lease, a
	// connection that stays): the queue holds the others only after.
	for _, d := range leased {
		if err := d.Ack(ctx); err != nil {
			if !client.IsCode(err, "not_found") {
				t.Fatal(err)
			}
			t.Logf("ack %s/%d: %v (sent again after an unknown outcome)", d.Queue, d.Seq, err)
		}
	}
	var qs client.QueueStats
	testcluster.WaitFor(t, waitTime, func() bool {
		qs, err = wk.QueueInfo(ctx, "jobs")
		if err != nil {
			t.Fatal(err)
		}
		return qs.Ready+qs.Inflight+qs.Delayed == n-int64(len(leased))
	})
	leader := c.WaitLeader()
	url := snapshotAdmin(t, leader)
	raw, _ := os.ReadFile(file)

	// Refused uploads, to a follower (which checks the file before it
	// sends anything on) and to the leader: a flipped byte, a truncated
	// file. Nothing changes on any node.
	via := c.Followers()[0]
	viaURL := snapshotAdmin(t, via)
	c.WaitConverged()
	sBefore := nodeSums(c)
	bad := bytes.Clone(raw)
	bad[len(bad)-100] ^= 1
	for _, u := range []string{viaURL, url} {
		if st, out := postRestore(t, u, bad); st != http.StatusBadRequest || !bytes.Contains(out, []byte("bad_snapshot")) || !bytes.Contains(out, []byte("checksum mismatch")) {
			t.Fatalf("corrupt restore: %d %s", st, out)
		}
		if st, out := postRestore(t, u, raw[:len(raw)/2]); st != http.StatusBadRequest || !bytes.Contains(out, []byte("truncated")) {
			t.Fatalf("truncated restore: %d %s", st, out)
		}
	}
	c.WaitConverged()
	if got := nodeSums(c); !reflect.DeepEqual(got, sBefore) {
		t.Errorf("a refused restore changed the state: %v, was %v", got, sBefore)
	}

	// The restore goes through a follower: it checks the file and
	// streams it to the leader over the Raft port, which restores it.
	// The leader can change meanwhile (under load the test cluster's
	// 300 ms timeouts let a stalled node lose its lease): a 503 (nothing
	// restored, or the outcome unknown), or a node that led by the time
	// the file came, has it sent again to a node that follows then.
	// Nothing writes now, and Raft installs the file whole: a second
	// restore of the same file leaves the state the first one left.
	var rr transport.SnapshotRestoreResult
	for attempt := 0; ; attempt++ {
		via := c.Followers()[0]
		st, out := postRestore(t, snapshotAdmin(t, via), raw)
		if st == http.StatusServiceUnavailable && attempt < 10 {
			t.Logf("restore through follower %s: %d %s; again", via.ID, st, out)
			continue
		}
		if st != http.StatusOK {
			t.Fatalf("restore through follower %s: %d %s", via.ID, st, out)
		}
		rr = transport.SnapshotRestoreResult{}
		if err := json.Unmarshal(out, &rr); err != nil || rr.Index <= h.Index {
			t.Fatalf("restore answer %s (%v): the log index must be above the snapshot's %d", out, err, h.Index)
		}
		if rr.Leader == via.ID && attempt < 10 {
			t.Logf("restore through follower %s: it led by then; again", via.ID)
			continue
		}
		if rr.Via != via.ID || rr.Leader == "" || rr.Leader == via.ID || rr.Restored == nil || rr.Restored.AuditHead != h.AuditHead {
			t.Fatalf("restore answer %s: want another node's leader, through %s, of the file's head %+v", out, via.ID, h.AuditHead)
		}
		break
	}
	if !slices.ContainsFunc(c.Nodes, func(nd *testcluster.Node) bool { return nd.ID == rr.Leader }) {
		t.Fatalf("restored by %q, not a member", rr.Leader)
	}
	checkRestored(t, c, h, want)
	// The cluster goes on from the restored state.
	if _, err := w.Enqueue(ctx, "jobs", map[string]int{"after": 1}); err != nil {
		t.Fatal(err)
	}
	c.WaitConverged()

	// A new cluster, its log far behind the snapshot's index.
	c2 := testcluster.Start(t, 3, testcluster.Options{})
	if _, err := c2.Dial("other").Enqueue(ctx, "other", map[string]int{"x": 1}); err != nil {
		t.Fatal(err)
	}
	// This one is sent to the leader directly (again, as above, if the
	// answer is 503 or the node no longer led when the file came).
	for attempt := 0; ; attempt++ {
		st, out := postRestore(t, snapshotAdmin(t, c2.WaitLeader()), raw)
		if attempt < 10 && (st == http.StatusServiceUnavailable || st == http.StatusOK && bytes.Contains(out, []byte(`"via"`))) {
			t.Logf("restore into a new cluster: %d %s; again", st, out)
			continue
		}
		if st != http.StatusOK || bytes.Contains(out, []byte(`"via"`)) {
			t.Fatalf("restore into a new cluster: %d %s", st, out)
		}
		break
	}
	checkRestored(t, c2, h, want)
	w2 := c2.Dial("writer2")
	if _, err := w2.Enqueue(ctx, "jobs", map[string]int{"after": 2}); err != nil {
		t.Fatal(err)
	}
	c2.WaitConverged()
	// Every node restarted keeps the restored state (the FSM's applied
	// index and Raft's snapshot agree after a restart).
	for _, nd := range c2.Nodes {
		c2.StopNode(nd)
	}
	for _, nd := range c2.Nodes {
		c2.RestartNode(nd)
	}
	c2.WaitLeader()
	c2.WaitConverged()
	_ = c2.Nodes[0].Node.FSM().View(func(tx *bolt.Tx) error {
		if got := countPrefix(tx, "msgs", "jobs\x00"); got != n+1 {
			t.Errorf("after restarts: %d messages in jobs, want %d", got, n+1)
		}
		return nil
	})
}

// Restores through a follower while the leader is gone: right after the
// leader dies, the follower finds the new one and the restore succeeds;
// with no leader left (two of three nodes down), the follower answers
// unavailable, says why, and nothing changes.
func TestSnapshotRestoreThroughFollowerLeaderLost(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node cluster and waits for a leader that does not come")
	}
	// The nodes' temporary files go here, to see that none is left.
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := testcluster.Start(t, 3, testcluster.Options{})
	w := c.Dial("writer", c.URLs()...)
	for i := range 50 {
		if _, err := w.Enqueue(ctx, "jobs", map[string]int{"i": i}); err != nil {
			t.Fatal(err)
		}
	}
	c.WaitConverged()
	file := saveSnapshot(t, snapshotAdmin(t, c.Followers()[0]), t.TempDir())
	res, err := snapshot.Check(file, t.TempDir(), nil, "")
	if err != nil {
		t.Fatal(err)
	}
	want, _ := fileState(t, file)
	raw, _ := os.ReadFile(file)
	for i := range 20 {
		if _, err := w.Enqueue(ctx, "more", map[string]int{"i": i}); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	c.WaitConverged()

	old := c.WaitLeader()
	f := c.Followers()
	urls := map[string]string{}
	for _, nd := range f {
		urls[nd.ID] = snapshotAdmin(t, nd)
	}
	c.KillNode(old)
	// The follower must find the new leader. Once it has, that one can
	// lose its leadership in turn while the file comes or commits (a
	// stalled process): that 503 has the file sent again (nothing else
	// writes, and a second restore of the file leaves the same state).
	st, out := postRestore(t, urls[f[0].ID], raw)
	for attempt := 0; st == http.StatusServiceUnavailable && !bytes.Contains(out, []byte("nothing was sent")) && attempt < 10; attempt++ {
		t.Logf("restore through %s after the leader died: %d %s; again", f[0].ID, st, out)
		st, out = postRestore(t, urls[f[0].ID], raw)
	}
	if st != http.StatusOK {
		t.Fatalf("restore through %s after the leader died: %d %s", f[0].ID, st, out)
	}
	var rr transport.SnapshotRestoreResult
	if err := json.Unmarshal(out, &rr); err != nil || rr.Leader == old.ID || rr.Leader == "" {
		t.Fatalf("restore answer %s (%v): want a new leader", out, err)
	}
	checkRestored(t, c, res.Header, want)

	// The new leader dies too: the last node is a follower whose leader
	// is unreachable, and no leader can be elected.
	leader := c.WaitLeader()
	last := c.Followers()[0]
	c.KillNode(leader)
	sBefore := nodeSums(c)
	start := time.Now()
	st, out = postRestore(t, urls[last.ID], raw)
	var e transport.AdminError
	if err := json.Unmarshal(out, &e); err != nil || st != http.StatusServiceUnavailable || e.Code != "unavailable" ||
		!strings.Contains(e.Error, "nothing was sent") || !(strings.Contains(e.Error, "no leader known") || strings.Contains(e.Error, "cannot reach the leader")) {
		t.Fatalf("restore through a follower without a leader: %d %s", st, out)
	}
	t.Logf("answered after %v: %s", time.Since(start).Round(time.Millisecond), e.Error)
	if got := nodeSums(c); !reflect.DeepEqual(got, sBefore) {
		t.Errorf("the refused restore changed the state of %s", last.ID)
	}
	if left, _ := filepath.Glob(filepath.Join(tmp, "mcpd-*")); len(left) != 0 {
		t.Errorf("temporary files left behind: %v", left)
	}
}
