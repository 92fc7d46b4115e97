package systemtest

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mcpd/mcpd/client"
)

// mcpdRun runs a short mcpd command and returns its output; it fails the
// test when the command fails.
func mcpdRun(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(mcpdBinary(t), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("mcpd %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// addJoiner starts node k (a spare namespace) as 'serve --join', with a
// certificate of the cluster CA, and appends it to c.nodes. peers is its
// --peers: the running cluster's servers and itself.
func (c *faultCluster) addJoiner(k int, peers string, extra ...string) *fnode {
	c.t.Helper()
	id := fmt.Sprintf("n%d", k)
	addr := c.lab.addr(k)
	tlsDir := filepath.Join(c.dir, "tls")
	runMcpd(c.t, "tls", "init", "--dir", tlsDir, "--node", id, "--host", addr)
	data := filepath.Join(c.dir, id)
	args := append([]string{mcpdBinary(c.t), "serve",
		"--node-id", id,
		"--data-dir", data,
		"--bind", addr,
		"--peers", peers,
		"--join",
		"--tls-dir", tlsDir,
		"--node-down-after", faultNodeDownAfter.String(),
		"--log-level", "info",
		"--insecure-auth-none",
	}, extra...)
	p := &proc{name: id, bin: "ip", args: c.lab.wrap(k, args...), logPath: filepath.Join(c.dir, id+".log")}
	manage(c.t, p)
	nd := &fnode{
		k: k, id: id, ip: addr, proc: p, data: data,
		health: net.JoinHostPort(addr, "4434"),
		url:    "wss://" + net.JoinHostPort(addr, "4433") + "/v1",
	}
	c.nodes = append(c.nodes, nd)
	p.start(c.t)
	return nd
}

// slowRaft are the Raft timeouts of a five-node fault cluster, for every
// node of a cluster that grows to five.
var slowRaft = []string{"--raft-heartbeat-timeout", faultRaftTimeout5.String(), "--raft-election-timeout", faultRaftTimeout5.String()}

// A three-node cluster under a write load grows to five (two nodes join
// with certificates of the same CA), hands leadership to a new node, and
// shrinks by one of the first three: no acknowledged message is lost,
// none is delivered that was not sent, and the replicas converge.
func Test_Membership_GrowShrinkUnderLoad(t *testing.T) {
	c := newFaultCluster(t, 3, clusterOpts{spare: 2, extra: func(int) []string { return slowRaft }})
	w := c.workload("member.load", workloadOpts{producers: 3, consumers: 2})
	w.more(batch, 60*time.Second)

	peers := c.peers
	for _, k := range []int{4, 5} {
		id := fmt.Sprintf("n%d", k)
		raftAddr := net.JoinHostPort(c.lab.addr(k), "4438")
		peers += "," + id + "=" + raftAddr
		nd := c.addJoiner(k, peers, slowRaft...)
		// Through a follower's admin socket: it forwards to the leader.
		leader := c.leader(30 * time.Second)
		via := c.others(leader)[0]
		w.fault("join %s through %s", id, via.id)
		out := mcpdRun(t, "cluster", "join", id+"="+raftAddr, "--data-dir", via.data)
		t.Logf("%s", strings.TrimSpace(out))
		waitReady(t, nd.health, 60*time.Second)
		w.more(batch, 60*time.Second)
	}
	status := mcpdRun(t, "cluster", "status", "--data-dir", c.node(1).data)
	t.Logf("cluster status:\n%s", status)
	if got := strings.Count(status, " Voter "); got != 5 {
		t.Fatalf("%d voters in the status, want 5", got)
	}

	w.fault("transfer leadership to n4")
	out := mcpdRun(t, "cluster", "transfer-leadership", "n4", "--data-dir", c.node(2).data)
	if !strings.Contains(out, "leader: n4") {
		t.Fatalf("transfer-leadership: %s", out)
	}
	if l := c.leader(30 * time.Second); l.id != "n4" {
		t.Logf("leader is %s after the transfer (it may have moved on since)", l.id)
	}
	w.more(batch, 60*time.Second)

	// Remove n1, then stop it; the clients that used it move on.
	removed := c.node(1)
	w.fault("remove n1")
	mcpdRun(t, "cluster", "remove", "n1", "--data-dir", c.node(5).data)
	removed.proc.kill()
	c.nodes = slices.DeleteFunc(c.nodes, func(nd *fnode) bool { return nd == removed })
	w.more(batch, 60*time.Second)
	status = mcpdRun(t, "cluster", "status", "--data-dir", c.node(2).data)
	t.Logf("cluster status:\n%s", status)
	if strings.Contains(status, "n1 ") || strings.Count(status, " Voter ") != 4 {
		t.Fatalf("after removing n1:\n%s", status)
	}
	finishAndCheck(t, c, w)
}

// Two of three nodes are lost for good: 'mcpd cluster recover' gives the
// survivor a configuration of its own (refused while it runs), and it
// serves alone with every message acknowledged before.
func Test_Membership_RecoverFromOneSurvivor(t *testing.T) {
	c := newFaultCluster(t, 3, clusterOpts{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl := c.dial(ctx, "producer", c.urls(1)...)
	const n = 200
	for i := range n {
		if _, err := cl.Enqueue(ctx, "recover.jobs", map[string]int{"i": i}); err != nil {
			t.Fatal(err)
		}
	}
	cl.Close()
	n1 := c.node(1)
	self := "n1=" + net.JoinHostPort(n1.ip, "4438")
	out, err := exec.Command(mcpdBinary(t), "cluster", "recover", "--data-dir", n1.data, "--peers", self).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "running") {
		t.Fatalf("recover of a running node: %v\n%s", err, out)
	}
	c.node(2).kill()
	c.node(3).kill()
	n1.kill()
	t.Logf("%s", strings.TrimSpace(mcpdRun(t, "cluster", "recover", "--data-dir", n1.data, "--peers", self)))

	// The same node, its --peers now itself alone.
	i := slices.Index(n1.proc.args, "--peers")
	n1.proc.args[i+1] = self
	n1.start(t)
	s := waitReady(t, n1.health, 60*time.Second)
	if s.Role != "Leader" {
		t.Fatalf("n1 after recovery: %+v", s)
	}
	cl = c.dial(ctx, "consumer", n1.url)
	if _, err := cl.Enqueue(ctx, "recover.jobs", map[string]int{"i": n}); err != nil {
		t.Fatal(err)
	}
	cons, err := cl.Consume(ctx, "recover.jobs", client.ConsumeOptions{Prefetch: 64})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for len(seen) < n+1 {
		d, err := cons.Next(ctx)
		if err != nil {
			t.Fatalf("after %d of %d messages: %v", len(seen), n+1, err)
		}
		var env struct {
			Body struct{ I int } `json:"body"`
		}
		if err := json.Unmarshal(d.Msg, &env); err != nil {
			t.Fatal(err)
		}
		seen[env.Body.I] = true
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
	status := mcpdRun(t, "cluster", "status", "--data-dir", n1.data)
	t.Logf("cluster status:\n%s", status)
	if strings.Count(status, " Voter ") != 1 {
		t.Fatalf("after recovery:\n%s", status)
	}
}
