package cluster_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/internal/testcluster"
)

// flipAfter flips one bit just after the first occurrence of marker in
// the file at path.
func flipAfter(t *testing.T, path string, marker []byte) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, marker)
	if i < 0 {
		t.Fatalf("%q not found in %s", marker, path)
	}
	b[i+len(marker)] ^= 0x04
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func corruptDirs(t *testing.T, dataDir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dataDir, "corrupt-*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func suffrage(t *testing.T, leader *testcluster.Node, id string) raft.ServerSuffrage {
	t.Helper()
	cf := leader.Node.Raft().GetConfiguration()
	if err := cf.Error(); err != nil {
		t.Fatal(err)
	}
	for _, s := range cf.Configuration().Servers {
		if string(s.ID) == id {
			return s.Suffrage
		}
	}
	return raft.ServerSuffrage(-1)
}

// A follower whose raft log fails its checksum moves its raft data
// aside, is demoted, catches up as a non-voter (serving nobody), and is
// promoted back; nothing the cluster committed meanwhile is lost.
func Test_Cluster_CorruptLogRejoinsAsNonvoter(t *testing.T) {
	c := testcluster.Start(t, 3, testcluster.Options{})
	leader := c.WaitLeader()
	victim := c.Followers()[0]
	cl := c.Dial("producer", leader.URL)
	for i := range 100 {
		if _, err := cl.Enqueue(ctx(t), "rejoin", fmt.Sprintf("flip-me-%03d", i)); err != nil {
			t.Fatal(err)
		}
	}
	c.WaitApplied()
	c.StopNode(victim)
	flipAfter(t, filepath.Join(victim.DataDir, "raft", "raft.db"), []byte("flip-me-050"))

	c.RestartNode(victim)
	if !victim.Node.Rejoining() || victim.Node.Ready() {
		t.Fatalf("restarted on a corrupt log: rejoining %v, ready %v", victim.Node.Rejoining(), victim.Node.Ready())
	}
	if err := victim.Node.Read(nil); err == nil {
		t.Fatal("a rejoining node served a read")
	}
	// The cluster keeps committing on the two healthy voters.
	for i := 100; i < 150; i++ {
		if _, err := cl.Enqueue(ctx(t), "rejoin", fmt.Sprintf("flip-me-%03d", i)); err != nil {
			t.Fatal(err)
		}
	}
	testcluster.WaitFor(t, 30*time.Second, func() bool { return !victim.Node.Rejoining() })
	if s := suffrage(t, c.WaitLeader(), victim.ID); s != raft.Voter {
		t.Fatalf("%s is %v after the rejoin, want a voter", victim.ID, s)
	}
	c.WaitConverged()
	info, err := c.Dial("reader", victim.URL).QueueInfo(ctx(t), "rejoin")
	if err != nil {
		t.Fatal(err)
	}
	if info.Ready != 150 {
		t.Fatalf("ready %d on the repaired node, want 150", info.Ready)
	}
	dirs := corruptDirs(t, victim.DataDir)
	if len(dirs) != 1 {
		t.Fatalf("corrupt dirs %v, want one", dirs)
	}
	if _, err := os.Stat(filepath.Join(dirs[0], "raft", "raft.db")); err != nil {
		t.Fatalf("the damaged raft.db was not kept: %v", err)
	}
	if _, err := os.Stat(filepath.Join(victim.DataDir, "rejoin-pending")); !os.IsNotExist(err) {
		t.Fatalf("rejoin marker still there: %v", err)
	}
}

// A state.db that no longer matches its clean-close checksum is moved
// aside and rebuilt from the node's own snapshot and log.
func Test_Cluster_CorruptStateRebuiltFromLog(t *testing.T) {
	c := testcluster.Start(t, 3, testcluster.Options{})
	leader := c.WaitLeader()
	victim := c.Followers()[0]
	cl := c.Dial("producer", leader.URL)
	for i := range 50 {
		if _, err := cl.Enqueue(ctx(t), "state", fmt.Sprintf("state-flip-%03d", i)); err != nil {
			t.Fatal(err)
		}
	}
	c.WaitApplied()
	c.StopNode(victim)
	path := filepath.Join(victim.DataDir, "state.db")
	if v, why, err := fsm.CheckState(path); err != nil || v != fsm.StateClean {
		t.Fatalf("state.db after a clean stop: %v %s %v", v, why, err)
	}
	flipAfter(t, path, []byte("state-flip-020"))
	c.RestartNode(victim)
	if victim.Node.Rejoining() {
		t.Fatal("a damaged state.db alone made the node rejoin")
	}
	c.WaitConverged()
	dirs := corruptDirs(t, victim.DataDir)
	if len(dirs) != 1 {
		t.Fatalf("corrupt dirs %v, want one", dirs)
	}
	if _, err := os.Stat(filepath.Join(dirs[0], "state.db")); err != nil {
		t.Fatalf("the damaged state.db was not kept: %v", err)
	}
}
