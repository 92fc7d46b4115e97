package transport_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
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

// A fourth node joins through a follower's admin API, catches up, takes
// over leadership; a first node is removed; every step keeps the data.
func Test_AdminCluster_JoinTransferRemove(t *testing.T) {
	c, leader, f := startThree(t)
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

	fu := adminOf(t, f[0])
	st := clusterStatusOf(t, fu)
	if len(st.Servers) != 3 || st.Leader != leader.ID || st.Node != f[0].ID {
		t.Fatalf("status %+v", st)
	}
	leaders := 0
	for _, s := range st.Servers {
		if !s.Healthy || s.Suffrage != "Voter" || s.Error != "" || s.Term == 0 || s.Commit == 0 {
			t.Fatalf("server %+v", s)
		}
		if s.Role == "Leader" {
			leaders++
		}
	}
	if leaders != 1 {
		t.Fatalf("%d leaders in %+v", leaders, st.Servers)
	}

	n4 := c.StartJoiner("n4")
	if n4.Node.Ready() {
		t.Fatal("a joiner is ready before it was added")
	}
	var ch transport.ClusterChanged
	if code := adminDo(t, "POST", fu+"/v1/cluster/join", transport.ClusterChange{ID: "n4", Addr: n4.RaftAddr()}, &ch); code != 200 || !ch.OK {
		t.Fatalf("join: %d %+v", code, ch)
	}
	// Again: nothing to do. The same id at another address is a conflict.
	if code := adminDo(t, "POST", fu+"/v1/cluster/join", transport.ClusterChange{ID: "n4", Addr: n4.RaftAddr()}, nil); code != 200 {
		t.Fatalf("join again: %d", code)
	}
	if code := adminDo(t, "POST", fu+"/v1/cluster/join", transport.ClusterChange{ID: "n4", Addr: "127.0.0.9:1"}, nil); code != http.StatusConflict {
		t.Fatalf("join elsewhere: %d", code)
	}
	send(20)
	c.WaitConverged()
	testcluster.WaitFor(t, 20*time.Second, n4.Node.Ready)

	// Hand leadership to the new node, from a follower.
	if code := adminDo(t, "POST", fu+"/v1/cluster/transfer-leadership", transport.ClusterChange{ID: "n4"}, &ch); code != 200 || ch.Leader != "n4" {
		t.Fatalf("transfer: %d %+v", code, ch)
	}
	send(20)

	// Remove the first leader through the new one.
	u4 := adminOf(t, n4)
	if code := adminDo(t, "POST", u4+"/v1/cluster/remove", transport.ClusterChange{ID: leader.ID}, &ch); code != 200 {
		t.Fatalf("remove: %d", code)
	}
	if code := adminDo(t, "POST", u4+"/v1/cluster/remove", transport.ClusterChange{ID: "n9"}, nil); code != http.StatusNotFound {
		t.Fatalf("remove unknown: %d", code)
	}
	c.StopNode(leader)
	send(20)
	st = clusterStatusOf(t, u4)
	if len(st.Servers) != 3 || st.Leader != "n4" {
		t.Fatalf("after remove: %+v", st)
	}
	for _, s := range st.Servers {
		if s.ID == leader.ID || !s.Healthy {
			t.Fatalf("after remove: %+v", s)
		}
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
	st := clusterStatusOf(t, u)
	if len(st.Servers) != 3 {
		t.Fatalf("status %+v", st)
	}
	for _, s := range st.Servers {
		down := s.ID == f[1].ID
		if down != (s.Error != "") || down == s.Healthy || s.Level != fsm.Level {
			t.Fatalf("server %+v (down: %s)", s, f[1].ID)
		}
	}
	var ch transport.ClusterChanged
	if code := adminDo(t, "POST", u+"/v1/cluster/transfer-leadership", nil, &ch); code != 200 || ch.Leader != f[0].ID {
		t.Fatalf("transfer: %d %+v, want leader %s", code, ch, f[0].ID)
	}
	var e transport.AdminError
	if code := adminDo(t, "POST", u+"/v1/cluster/join", transport.ClusterChange{ID: "n9"}, &e); code != http.StatusBadRequest || e.Code != "bad_request" {
		t.Fatalf("join without addr: %d %+v", code, e)
	}
}
