package cluster_test

import (
	"context"
	"errors"
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
