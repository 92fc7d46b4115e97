package transport_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/internal/testcluster"
	"github.com/mcpd/mcpd/transport"
	bolt "go.etcd.io/bbolt"
)

// adminOf serves nd's admin API as its unix socket does.
func adminOf(t *testing.T, nd *testcluster.Node) string {
	srv := httptest.NewServer(transport.NewAdmin(nd.Node, nil, nil).LocalHandler())
	t.Cleanup(srv.Close)
	return srv.URL
}

func adminDo(t *testing.T, method, url string, body any, out any) int {
	t.Helper()
	var rd bytes.Buffer
	if body != nil {
		_ = json.NewEncoder(&rd).Encode(body)
	}
	req, err := http.NewRequest(method, url, &rd)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatalf("%s %s: %v", method, url, err)
		}
	}
	return resp.StatusCode
}

func clusterStatusOf(t *testing.T, url string) transport.ClusterStatus {
	t.Helper()
	var st transport.ClusterStatus
	if code := adminDo(t, "GET", url+"/v1/cluster", nil, &st); code != 200 {
		t.Fatalf("GET /v1/cluster: %d", code)
	}
	return st
}

// clusterSettled waits until the status url answers names one leader, the
// node that leads, with every server of want healthy in it: an election
// (under load the test cluster's 300 ms timeouts let a stalled node lose
// its lease) leaves the status without a leader, or with one that no
// longer leads, for a moment.
func clusterSettled(t *testing.T, c *testcluster.Cluster, url string, want ...string) transport.ClusterStatus {
	t.Helper()
	var st transport.ClusterStatus
	testcluster.WaitFor(t, 20*time.Second, func() bool {
		st = clusterStatusOf(t, url)
		if len(st.Servers) != len(want) {
			return false
		}
		leaders := 0
		for _, s := range st.Servers {
			if !slices.Contains(want, s.ID) || !s.Healthy || s.Suffrage != "Voter" || s.Error != "" || s.Term == 0 || s.Commit == 0 {
				return false
			}
			if s.Role == "Leader" {
				leaders++
				if s.ID != st.Leader {
					return false
				}
			}
		}
		for _, nd := range c.Nodes {
			if nd.ID == st.Leader && (nd.Stopped() || !nd.Node.IsLeader()) {
				return false
			}
		}
		return leaders == 1
	})
	return st
}

// adminChange posts a cluster change to the admin API of whichever node
// pick names, sent again while the answer is 503: no leader, or it
// changed while the request was on its way (docs/ops/cluster.md).
// unavailable reports whether an attempt was answered 503, when the
// outcome of a change is not known.
func adminChange(t *testing.T, pick func() string, path string, body any, out any) (code int, unavailable bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		code = adminDo(t, "POST", pick()+path, body, out)
		if code != http.StatusServiceUnavailable || time.Now().After(deadline) {
			return code, unavailable
		}
		unavailable = true
	}
}

// A fourth node joins through a follower's admin API, catches up, takes
// over leadership; a first node is removed; every step keeps the data.
// The leader may change at any step (raft promises none stays); the
// requests go to a node that follows when they are sent.
func Test_AdminCluster_JoinTransferRemove(t *testing.T) {
	c, leader, _ := startThree(t)
	cl := c.Dial("writer")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	send := func(n int) {
		for i := range n {
			if _, err := cl.Enqueue(ctx, "jobs", map[string]int{"i": i}); err != nil {
				t.Fatal(err)
			}
		}
	}
	send(20)

	admins := map[string]string{}
	for _, nd := range c.Nodes {
		admins[nd.ID] = adminOf(t, nd)
	}
	// follower is the admin API of a node that does not lead now.
	follower := func() string {
		for _, nd := range c.Nodes {
			if !nd.Stopped() && !nd.Node.IsLeader() {
				if u, ok := admins[nd.ID]; ok {
					return u
				}
			}
		}
		t.Fatal("no follower")
		return ""
	}
	f0 := c.Followers()[0]
	st := clusterSettled(t, c, admins[f0.ID], "n1", "n2", "n3")
	if st.Node != f0.ID {
		t.Fatalf("status %+v, answered by %s", st, f0.ID)
	}
	// Every server runs this version: the leader raises the cluster
	// level to it.
	testcluster.WaitFor(t, 20*time.Second, func() bool {
		st := clusterStatusOf(t, admins[f0.ID])
		return st.ClusterLevel == fsm.Level && st.Level == fsm.Level
	})

	n4 := c.StartJoiner("n4")
	if n4.Node.Ready() {
		t.Fatal("a joiner is ready before it was added")
	}
	var ch transport.ClusterChanged
	if code, _ := adminChange(t, follower, "/v1/cluster/join", transport.ClusterChange{ID: "n4", Addr: n4.RaftAddr()}, &ch); code != 200 || !ch.OK {
		t.Fatalf("join: %d %+v", code, ch)
	}
	// Again: nothing to do. The same id at another address is a conflict.
	if code, _ := adminChange(t, follower, "/v1/cluster/join", transport.ClusterChange{ID: "n4", Addr: n4.RaftAddr()}, nil); code != 200 {
		t.Fatalf("join again: %d", code)
	}
	if code, _ := adminChange(t, follower, "/v1/cluster/join", transport.ClusterChange{ID: "n4", Addr: "127.0.0.9:1"}, nil); code != http.StatusConflict {
		t.Fatalf("join elsewhere: %d", code)
	}
	send(20)
	c.WaitConverged()
	testcluster.WaitFor(t, 20*time.Second, n4.Node.Ready)

	// Hand leadership to the new node, from a follower. The transfer
	// succeeds when n4 is elected; an election soon after can still
	// elect another node, which the answer then names: ask again.
	admins["n4"] = adminOf(t, n4)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ch = transport.ClusterChanged{}
		code, _ := adminChange(t, follower, "/v1/cluster/transfer-leadership", transport.ClusterChange{ID: "n4"}, &ch)
		if code != 200 || !ch.OK || ch.Leader == "" {
			t.Fatalf("transfer: %d %+v", code, ch)
		}
		if ch.Leader == "n4" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("transfer: %d %+v, want leader n4", code, ch)
		}
		t.Logf("transfer: %+v; n4 lost the leadership again, transfer again", ch)
	}
	send(20)

	// Remove the first leader through the new one. A 503 leaves the
	// outcome open: sent again, a remove that had been made is a 404.
	u4 := admins["n4"]
	n4api := func() string { return u4 }
	code, unknown := adminChange(t, n4api, "/v1/cluster/remove", transport.ClusterChange{ID: leader.ID}, &ch)
	if code != 200 && !(unknown && code == http.StatusNotFound) {
		t.Fatalf("remove: %d", code)
	}
	if code, _ := adminChange(t, n4api, "/v1/cluster/remove", transport.ClusterChange{ID: "n9"}, nil); code != http.StatusNotFound {
		t.Fatalf("remove unknown: %d", code)
	}
	c.StopNode(leader)
	send(20)
	var rest []string
	for _, id := range []string{"n1", "n2", "n3", "n4"} {
		if id != leader.ID {
			rest = append(rest, id)
		}
	}
	st = clusterSettled(t, c, u4, rest...)
	if st.Node != "n4" {
		t.Fatalf("after remove: %+v, answered by n4", st)
	}
	c.WaitConverged()

	// Every message is there on the new member.
	qs, err := c.Dial("reader", n4.URL).QueueInfo(ctx, "jobs")
	if err != nil {
		t.Fatal(err)
	}
	if qs.Ready != 80 {
		t.Fatalf("jobs on n4: %+v, want 80 ready", qs)
	}
}

// A server that is down is listed with why it did not answer; a transfer
// without a target picks a voter that is up.
func Test_AdminCluster_StatusWithANodeDown(t *testing.T) {
	c, leader, f := startThree(t)
	// Every node's command level is recorded: a node down still shows
	// the one it announced.
	testcluster.WaitFor(t, 10*time.Second, func() bool {
		var n int
		_ = leader.Node.FSM().View(func(tx *bolt.Tx) error {
			for _, l := range fsm.NodeLevels(tx) {
				if l == fsm.Level {
					n++
				}
			}
			return nil
		})
		return n == 3
	})
	c.KillNode(f[1])
	u := adminOf(t, leader)
	// With a node down the other two must keep contact for their quorum:
	// a stall of the process can cost a heartbeat or an election, and
	// the status shows an up node unhealthy for a moment.
	testcluster.WaitFor(t, 20*time.Second, func() bool {
		st := clusterStatusOf(t, u)
		if len(st.Servers) != 3 {
			return false
		}
		for _, s := range st.Servers {
			down := s.ID == f[1].ID
			if down != (s.Error != "") || down == s.Healthy || s.Level != fsm.Level {
				return false
			}
		}
		return true
	})
	// The transfer goes to the one other voter that is up. The leader
	// that receives it is whichever leads then, and an election can hand
	// leadership back before the answer: ask again then.
	up := map[string]string{leader.ID: f[0].ID, f[0].ID: leader.ID}
	deadline := time.Now().Add(30 * time.Second)
	for {
		from := c.WaitLeader()
		var ch transport.ClusterChanged
		code, _ := adminChange(t, func() string { return u }, "/v1/cluster/transfer-leadership", nil, &ch)
		if code != 200 || (ch.Leader != leader.ID && ch.Leader != f[0].ID) {
			t.Fatalf("transfer: %d %+v, want leader %s or %s", code, ch, leader.ID, f[0].ID)
		}
		if ch.Leader == up[from.ID] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("transfer from %s: %+v, want leader %s", from.ID, ch, up[from.ID])
		}
		t.Logf("transfer from %s: %+v; leadership moved meanwhile, transfer again", from.ID, ch)
	}
	var e transport.AdminError
	if code := adminDo(t, "POST", u+"/v1/cluster/join", transport.ClusterChange{ID: "n9"}, &e); code != http.StatusBadRequest || e.Code != "bad_request" {
		t.Fatalf("join without addr: %d %+v", code, e)
	}
}
