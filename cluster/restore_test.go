package cluster_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mcpd/mcpd/cluster"
	"github.com/mcpd/mcpd/internal/testcluster"
)

// A restore forwarded to the leader, as its handler saw it.
type restoreCall struct {
	node string
	req  cluster.RestoreRequest
	n    int64
	sum  [32]byte
	err  error
}

type restoreLog struct {
	mu      sync.Mutex
	calls   []restoreCall
	started []string // the nodes whose handler began to read a file
}

func (l *restoreLog) receivers() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.started...)
}

func (l *restoreLog) get() []restoreCall {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]restoreCall(nil), l.calls...)
}

// recordRestores gives every node of c a restore handler that reads the
// file, records it, works for delay and answers with its node id.
func recordRestores(c *testcluster.Cluster, delay time.Duration) *restoreLog {
	l := &restoreLog{}
	for _, nd := range c.Nodes {
		id := nd.ID
		nd.Node.SetRestoreHandler(func(ctx context.Context, req cluster.RestoreRequest, body io.Reader) cluster.RestoreAnswer {
			l.mu.Lock()
			l.started = append(l.started, id)
			l.mu.Unlock()
			h := sha256.New()
			n, err := io.Copy(h, body)
			call := restoreCall{node: id, req: req, n: n, err: err}
			copy(call.sum[:], h.Sum(nil))
			l.mu.Lock()
			l.calls = append(l.calls, call)
			l.mu.Unlock()
			if err != nil {
				return cluster.RestoreAnswer{Status: 400, Body: []byte(err.Error())}
			}
			select {
			case <-time.After(delay):
			case <-ctx.Done():
			}
			return cluster.RestoreAnswer{Status: 200, Body: []byte(`{"leader":"` + id + `"}`)}
		})
	}
	return l
}

func randomFile(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// A follower streams the file to the leader over the Raft port and gets
// the leader's answer, also when the leader works on it for longer than
// either side waits for the other (its keepalives say it is busy). The
// leader's handler sees every byte, the operator and the follower's id
// from its certificate. A leader without a handler refuses before the
// file is sent.
func Test_Restore_FollowerSendsTheFileToTheLeader(t *testing.T) {
	cluster.SetRestoreTimings(t, 3*time.Second, time.Second, 100*time.Millisecond)
	c := testcluster.Start(t, 3, testcluster.Options{})
	leader := c.WaitLeader()
	follower := c.Followers()[0]
	data := randomFile(t, 4<<20+123)

	_, err := follower.Node.ForwardRestore(ctx(t), "operator:test", bytes.NewReader(data), int64(len(data)))
	if err == nil || !strings.Contains(err.Error(), "serves no admin API") || errors.Is(err, cluster.ErrUnavailable) {
		t.Fatalf("restore to a leader without a handler: %v", err)
	}

	l := recordRestores(c, 1500*time.Millisecond)
	start := time.Now()
	ans, err := follower.Node.ForwardRestore(ctx(t), "operator:test", bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(start) < 1500*time.Millisecond {
		t.Fatalf("answered in %v, before the handler finished", time.Since(start))
	}
	calls := l.get()
	if len(calls) != 1 {
		t.Fatalf("%d restores reached a handler: %+v", len(calls), calls)
	}
	// The file goes to the leader the follower finds: the node that led
	// at the start unless an election moved the leadership meanwhile
	// (raft promises no fixed leader). It is another node than the
	// follower, and its answer is the one relayed.
	got := calls[0]
	if got.node != leader.ID {
		t.Logf("the leadership moved from %s to %s before the file was sent", leader.ID, got.node)
	}
	if ans.Status != 200 || string(ans.Body) != `{"leader":"`+got.node+`"}` {
		t.Fatalf("answer %d %s, from the handler on %s", ans.Status, ans.Body, got.node)
	}
	want := cluster.RestoreRequest{Actor: "operator:test", From: follower.ID, Size: int64(len(data))}
	if got.node == follower.ID || got.req != want || got.err != nil || got.n != int64(len(data)) || got.sum != sha256.Sum256(data) {
		t.Fatalf("the leader's handler saw %+v, want the whole file from %+v on a node other than %s", got, want, follower.ID)
	}
}

// stallReader yields head, then waits for release before it yields
// tail; reached is closed once head is read.
type stallReader struct {
	head, tail       io.Reader
	reached, release chan struct{}
	once             sync.Once
}

func (r *stallReader) Read(p []byte) (int, error) {
	n, err := r.head.Read(p)
	if n > 0 || err != io.EOF {
		return n, err
	}
	r.once.Do(func() { close(r.reached) })
	<-r.release
	return r.tail.Read(p)
}

// The leader dies while a follower streams the file to it: the follower
// fails with ErrUnavailable (nothing was restored, safe to send again)
// and the leader's handler got a broken file, not a whole one.
func Test_Restore_LeaderLostDuringUploadRestoresNothing(t *testing.T) {
	cluster.SetRestoreTimings(t, 3*time.Second, 2*time.Second, 100*time.Millisecond)
	c := testcluster.Start(t, 3, testcluster.Options{})
	l := recordRestores(c, 0)
	c.WaitLeader()
	follower := c.Followers()[0]
	data := randomFile(t, 8<<20)
	body := &stallReader{head: bytes.NewReader(data[:1<<20]), tail: bytes.NewReader(data[1<<20:]),
		reached: make(chan struct{}), release: make(chan struct{})}
	errc := make(chan error, 1)
	go func() {
		_, err := follower.Node.ForwardRestore(ctx(t), "operator:test", body, int64(len(data)))
		errc <- err
	}()
	select {
	case <-body.reached:
	case err := <-errc:
		t.Fatalf("the restore ended before the leader was lost: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the upload did not start")
	}
	// The node killed is the one receiving the file: the leader the
	// follower found, which an election may have made another node than
	// the one that led at the start.
	var leader *testcluster.Node
	testcluster.WaitFor(t, 10*time.Second, func() bool { return len(l.receivers()) > 0 })
	if r := l.receivers(); len(r) != 1 {
		t.Fatalf("%d handlers received the file: %v", len(r), r)
	}
	for _, nd := range c.Nodes {
		if nd.ID == l.receivers()[0] {
			leader = nd
		}
	}
	c.KillNode(leader)
	close(body.release)
	err := <-errc
	if !errors.Is(err, cluster.ErrUnavailable) || !strings.Contains(err.Error(), "nothing was restored") {
		t.Fatalf("restore while the leader died: %v", err)
	}
	testcluster.WaitFor(t, 5*time.Second, func() bool { return len(l.get()) > 0 })
	calls := l.get()
	if len(calls) != 1 || calls[0].node != leader.ID || calls[0].err == nil || calls[0].n >= int64(len(data)) {
		t.Fatalf("handlers saw %+v; want one broken upload on %s", calls, leader.ID)
	}
	if !errors.Is(calls[0].err, io.ErrUnexpectedEOF) && !strings.Contains(calls[0].err.Error(), "broke off") {
		t.Fatalf("the leader's handler read error: %v", calls[0].err)
	}
}

// A follower that reaches no leader (the others are down, so there is
// none) says so, having sent nothing, once restoreFindLeader has passed.
func Test_Restore_NoReachableLeader(t *testing.T) {
	cluster.SetRestoreTimings(t, time.Second, time.Second, 100*time.Millisecond)
	c := testcluster.Start(t, 3, testcluster.Options{})
	l := recordRestores(c, 0)
	// The survivor is a node that did not lead when asked; every other
	// node is killed (not the leader and follower of a moment before: an
	// election may have moved the leadership in between), and the
	// survivor, alone, leads no more.
	leader := c.WaitLeader()
	var survivor *testcluster.Node
	for _, nd := range c.Nodes {
		if nd != leader && survivor == nil {
			survivor = nd
		}
	}
	for _, nd := range c.Nodes {
		if nd != survivor {
			c.KillNode(nd)
		}
	}
	testcluster.WaitFor(t, 5*time.Second, func() bool { return !survivor.Node.IsLeader() })
	start := time.Now()
	_, err := survivor.Node.ForwardRestore(ctx(t), "operator:test", bytes.NewReader([]byte("snapshot")), 8)
	if !errors.Is(err, cluster.ErrUnavailable) || !strings.Contains(err.Error(), "nothing was sent") ||
		!(strings.Contains(err.Error(), "no leader known") || strings.Contains(err.Error(), "cannot reach the leader")) {
		t.Fatalf("restore without a leader: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("gave up after %v", d)
	}
	if calls := l.get(); len(calls) != 0 {
		t.Fatalf("handlers saw %+v", calls)
	}
}

// Without mutual TLS on the Raft port, a node neither sends a restore
// nor takes one.
func Test_Restore_NeedsPeerTLS(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n, err := cluster.New(cluster.Config{
		NodeID: "p1", DataDir: filepath.Join(t.TempDir(), "p1"), RaftListener: ln,
		HeartbeatTimeout: 300 * time.Millisecond, ElectionTimeout: 300 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Shutdown() })
	n.SetRestoreHandler(func(context.Context, cluster.RestoreRequest, io.Reader) cluster.RestoreAnswer {
		t.Error("a plaintext restore reached the handler")
		return cluster.RestoreAnswer{}
	})
	testcluster.WaitFor(t, 10*time.Second, n.IsLeader)
	if _, err := n.ForwardRestore(ctx(t), "operator:test", bytes.NewReader([]byte("x")), 1); !errors.Is(err, cluster.ErrRestoreNeedsTLS) {
		t.Fatalf("sending a restore without TLS: %v", err)
	}
	conn, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	req := frame(t, cluster.RestoreRequest{Actor: "x", Size: 1})
	if _, err := conn.Write(append([]byte{cluster.ProtoRestore}, req...)); err != nil {
		t.Fatal(err)
	}
	var ready cluster.RestoreReady
	if err := cluster.ReadFrame(bufio.NewReader(conn), &ready); err != nil {
		t.Fatal(err)
	}
	if ready.OK || !strings.Contains(ready.Msg, "mutual TLS") {
		t.Fatalf("a plaintext restore was answered %+v", ready)
	}
}
