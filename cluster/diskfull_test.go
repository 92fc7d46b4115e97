package cluster_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mcpd/mcpd/audit"
	"github.com/mcpd/mcpd/client"
	"github.com/mcpd/mcpd/cluster"
	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/internal/testcluster"
	"github.com/mcpd/mcpd/transport"
	bolt "go.etcd.io/bbolt"
)

// authEvent proposes an audit event through nd as an operator's request
// would (the reply produced on nd), marked by its subject.
func authEvent(ctx context.Context, nd *cluster.Node, subject string) error {
	_, err := nd.Call(ctx, fsm.TypeAuthEvent, "", &fsm.AuthEventArgs{Kind: "auth.ok", Agent: "probe", Subject: subject, Node: nd.ID()})
	return err
}

// auditCount counts nd's audit entries of the events marked subject.
func auditCount(t *testing.T, nd *cluster.Node, subject string) int {
	t.Helper()
	n := 0
	err := nd.FSM().View(func(tx *bolt.Tx) error {
		_, err := audit.Scan(tx, audit.ScanOptions{}, func(r *audit.Record) bool {
			if r.Kind == "auth.ok" && r.Subject == subject {
				n++
			}
			return true
		})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// A single node whose state.db cannot commit (a full disk) answers every
// request at once instead of leaving it waiting for the disk: a request
// already in the log when the commit failed ends "outcome unknown" (and
// is applied once the disk recovers), a new one is refused "unavailable"
// and proposes nothing.
func Test_Cluster_StateDBCannotCommit_OneNode(t *testing.T) {
	c := testcluster.Start(t, 1, testcluster.Options{})
	nd := c.Nodes[0].Node
	ctx := ctx(t)
	if err := authEvent(ctx, nd, "before"); err != nil {
		t.Fatal(err)
	}

	// The next commit holds state.db until released, then fails as a
	// full disk does.
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	nd.FSM().InjectCommitFault(func() error {
		once.Do(func() { close(entered) })
		<-release
		return syscall.ENOSPC
	})
	var releaseOnce sync.Once
	letGo := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(func() { letGo(); nd.FSM().InjectCommitFault(nil) })
	if err := authEvent(ctx, nd, "pending"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("state.db was not committed within 10s")
	}

	// In the log while the commit is under way: applied after it.
	before := nd.Raft().LastIndex()
	inflight := make(chan error, 1)
	go func() { inflight <- authEvent(ctx, nd, "in-flight") }()
	testcluster.WaitFor(t, 10*time.Second, func() bool { return nd.Raft().LastIndex() > before })
	letGo()
	select {
	case err := <-inflight:
		if !errors.Is(err, cluster.ErrUnknown) || !strings.Contains(err.Error(), "state.db") {
			t.Fatalf("a request in the log when the commit failed: %v, want outcome unknown naming state.db", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a request in the log when the commit failed got no answer within 10s")
	}
	if r := nd.NotReadyReason(); !strings.Contains(r, "no space left") {
		t.Fatalf("not ready because %q, want the full disk", r)
	}

	// New requests: refused, nothing proposed.
	last := nd.Raft().LastIndex()
	err := authEvent(ctx, nd, "refused")
	if !errors.Is(err, cluster.ErrUnavailable) || errors.Is(err, cluster.ErrUnknown) || !strings.Contains(err.Error(), "state.db") {
		t.Fatalf("a request while state.db cannot commit: %v, want unavailable naming state.db", err)
	}
	// A command nobody here waits for goes to the leader, which is this
	// node: refused until its deadline, saying why.
	cmd, err := fsm.NewCommand(fsm.TypeAuthEvent, "", 0, &fsm.AuthEventArgs{Kind: "auth.ok", Agent: "probe", Subject: "refused", Node: nd.ID()})
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	err = nd.Submit(short, cmd)
	if !errors.Is(err, cluster.ErrUnavailable) || !strings.Contains(err.Error(), "state.db") {
		t.Fatalf("a node's own command while state.db cannot commit: %v, want unavailable naming state.db", err)
	}
	if got := nd.Raft().LastIndex(); got != last {
		t.Fatalf("refused commands reached the log: index %d, was %d", got, last)
	}

	// Space returns: the node recovers by itself and serves again.
	nd.FSM().InjectCommitFault(nil)
	testcluster.WaitFor(t, 20*time.Second, func() bool { return nd.FSM().Degraded() == "" })
	if err := authEvent(ctx, nd, "after"); err != nil {
		t.Fatal(err)
	}
	for subject, want := range map[string]int{"before": 1, "pending": 1, "in-flight": 1, "refused": 0, "after": 1} {
		if got := auditCount(t, nd, subject); got != want {
			t.Errorf("%d audit entries of %q, want %d", got, subject, want)
		}
	}
}

// A leader whose state.db cannot commit hands leadership to a node that
// can: writes go on, and the old leader catches up once it commits again.
func Test_Cluster_StateDBCannotCommit_LeaderHandsOver(t *testing.T) {
	c := testcluster.Start(t, 3, testcluster.Options{})
	old := c.WaitLeader()
	old.Node.FSM().InjectCommitFault(func() error { return syscall.ENOSPC })
	t.Cleanup(func() { old.Node.FSM().InjectCommitFault(nil) })
	var urls []string
	for _, nd := range c.Nodes {
		if nd != old {
			urls = append(urls, nd.URL)
		}
	}
	producer := c.Dial("producer", urls...)
	ctx := ctx(t)
	// The first write leaves a commit pending on the old leader, which
	// then fails.
	if _, err := producer.Enqueue(ctx, "jobs", map[string]any{"n": 0}); err != nil && !client.IsCode(err, "unavailable") {
		t.Fatal(err)
	}
	testcluster.WaitFor(t, 20*time.Second, func() bool {
		for _, nd := range c.Nodes {
			if nd != old && nd.Node.IsLeader() {
				return true
			}
		}
		return false
	})
	if old.Node.FSM().Degraded() == "" {
		t.Fatal("leadership moved, but the old leader's state.db commits")
	}
	for i := 1; i <= 20; i++ {
		if _, err := producer.Enqueue(ctx, "jobs", map[string]any{"n": i}); err != nil {
			t.Fatalf("enqueue %d after the handover: %v", i, err)
		}
	}

	old.Node.FSM().InjectCommitFault(nil)
	testcluster.WaitFor(t, 20*time.Second, func() bool { return old.Node.FSM().Degraded() == "" })
	c.WaitConverged()
}

// A follower whose state.db has not committed for a while stalls: it
// closes its client connections and refuses new ones, so its clients go
// on through another node, and accepts them again once it commits.
func Test_Cluster_StateDBCannotCommit_FollowerSendsClientsAway(t *testing.T) {
	cluster.SetStallGrace(t, 300*time.Millisecond)
	c := testcluster.Start(t, 3, testcluster.Options{})
	f := c.Followers()[0]
	var others []string
	for _, nd := range c.Nodes {
		if nd != f {
			others = append(others, nd.URL)
		}
	}
	// The Redis face of the follower, and a client of it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	resp := transport.NewRESPServer(f.Node, transport.RESPOptions{Dev: true})
	go resp.Serve(ln)
	t.Cleanup(resp.Close)
	redisLine := func(nc net.Conn) (string, error) {
		_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		return bufio.NewReader(nc).ReadString('\n')
	}
	redis, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer redis.Close()
	if _, err := redis.Write([]byte("PING\r\n")); err != nil {
		t.Fatal(err)
	}
	if line, err := redisLine(redis); line != "+PONG\r\n" {
		t.Fatalf("PING: %q, %v", line, err)
	}

	cl := c.Dial("agent", append([]string{f.URL}, others...)...)
	if cl.Node() != f.ID {
		t.Fatalf("client on %q, want the follower %s", cl.Node(), f.ID)
	}
	ctx := ctx(t)
	// A consumer on the follower: the stalled node would deliver it
	// nothing, so what it leased must go to it again elsewhere.
	cons, err := cl.Consume(ctx, "jobs", client.ConsumeOptions{Prefetch: 10})
	if err != nil {
		t.Fatal(err)
	}
	f.Node.FSM().InjectCommitFault(func() error { return syscall.ENOSPC })
	t.Cleanup(func() { f.Node.FSM().InjectCommitFault(nil) })
	// Any entry the follower applies leaves a commit pending there, which
	// fails; its clients' writes are refused from then on, and retried by
	// the client elsewhere once it reconnects.
	first, err := c.Dial("other", others...).Enqueue(ctx, "jobs", map[string]any{"n": 0})
	if err != nil {
		t.Fatal(err)
	}
	testcluster.WaitFor(t, 20*time.Second, func() bool { return f.Node.Stalled() != "" })
	testcluster.WaitFor(t, 20*time.Second, func() bool { n := cl.Node(); return n != "" && n != f.ID })
	second, err := cl.Enqueue(ctx, "jobs", map[string]any{"n": 1})
	if err != nil {
		t.Fatalf("enqueue after the client left the stalled node: %v", err)
	}
	want := map[uint64]bool{first.Seq: true, second.Seq: true}
	for len(want) > 0 {
		d, err := cons.Next(ctx)
		if err != nil {
			t.Fatalf("waiting for seqs %v: %v", want, err)
		}
		// A delivery of the stalled connection cannot be acked; it comes
		// again once its lease is released.
		if err := d.Ack(ctx); err == nil {
			delete(want, d.Seq)
		}
	}
	dial := func() error {
		short, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		cl, err := client.Dial(short, client.Options{URLs: []string{f.URL}, Agent: "late", TLSConfig: c.TLS.ClientTLS()})
		if err == nil {
			cl.Close()
		}
		return err
	}
	if err := dial(); !client.IsCode(err, "unavailable") || !strings.Contains(err.Error(), "state.db") {
		t.Fatalf("dial to the stalled node: %v, want unavailable naming state.db", err)
	}
	if line, err := redisLine(redis); !errors.Is(err, io.EOF) {
		t.Fatalf("the Redis connection of the stalled node: read %q, %v; want it closed", line, err)
	}
	late, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer late.Close()
	if line, _ := redisLine(late); !strings.HasPrefix(line, "-TRYAGAIN ") || !strings.Contains(line, "state.db") {
		t.Fatalf("a Redis connection to the stalled node got %q, want TRYAGAIN naming state.db", line)
	}

	f.Node.FSM().InjectCommitFault(nil)
	testcluster.WaitFor(t, 20*time.Second, func() bool { return f.Node.Stalled() == "" })
	if err := dial(); err != nil {
		t.Fatalf("dial once the node commits again: %v", err)
	}
	c.WaitConverged()
}
