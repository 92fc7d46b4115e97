package systemtest

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Corruption: a stopped node's Raft log, snapshot or state.db is damaged
// on disk. At its restart the node detects it, says so in one ERROR line,
// moves the damaged files aside, repairs itself from its peers or its own
// intact data, is ready again and ends with the same state as the others;
// the checker must find nothing acknowledged lost.

// flipAt flips one bit at each offset of the file.
func flipAt(t *testing.T, path string, offs ...int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, off := range offs {
		var b [1]byte
		if _, err := f.ReadAt(b[:], off); err != nil {
			t.Fatal(err)
		}
		b[0] ^= 0x20
		if _, err := f.WriteAt(b[:], off); err != nil {
			t.Fatal(err)
		}
	}
}

// flipRaftDB flips bytes in the middle of raft.db and in every copy of
// the 20 most recent message ids it holds (so a live entry is hit, not
// only a page bbolt has freed).
func flipRaftDB(t *testing.T, path string, w *workload) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	offs := []int64{int64(len(b) / 2)}
	found := 0
	for _, s := range w.newestIDs(5000) {
		if found == 20 {
			break
		}
		id := []byte(s)
		if bytes.Contains(b, id) {
			found++
		}
		for j := 0; ; {
			k := bytes.Index(b[j:], id)
			if k < 0 {
				break
			}
			offs = append(offs, int64(j+k+len(id)-1))
			j += k + len(id)
		}
	}
	flipAt(t, path, offs...)
	return fmt.Sprintf("flipped %d bytes of raft.db (%d bytes; %d recent ids found)", len(offs), len(b), found)
}

// flipRaftLog is flipRaftDB on the node's raft.db.
func flipRaftLog(t *testing.T, dataDir string, w *workload) string {
	return flipRaftDB(t, filepath.Join(dataDir, "raft", "raft.db"), w)
}

func newestSnapshot(t *testing.T, dataDir string) string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dataDir, "raft", "snapshots"))
	if err != nil {
		t.Fatal(err)
	}
	var dirs []string
	for _, e := range ents {
		if e.IsDir() && !strings.HasSuffix(e.Name(), ".tmp") {
			dirs = append(dirs, e.Name())
		}
	}
	if len(dirs) == 0 {
		return ""
	}
	// term-index-millis: compare numerically.
	sort.Slice(dirs, func(i, j int) bool {
		var ti, ii, tj, ij uint64
		fmt.Sscanf(dirs[i], "%d-%d-", &ti, &ii)
		fmt.Sscanf(dirs[j], "%d-%d-", &tj, &ij)
		return ti < tj || ti == tj && ii < ij
	})
	return filepath.Join(dataDir, "raft", "snapshots", dirs[len(dirs)-1])
}

// corruption is one way of damaging a stopped node's files.
type corruption struct {
	leader   bool // damage the leader (killed first) instead of a follower
	clean    bool // SIGTERM instead of SIGKILL
	snapshot bool // wait for a snapshot on the node first
	// corrupt damages the files in dataDir and says how.
	corrupt func(t *testing.T, dataDir string, w *workload) string
	expect  string // in the corruption line
}

// corruptRound stops a node under the standard workload, damages its
// files, restarts it, and checks the corruption line, that it is ready
// again without bootstrapping, and that the cluster goes on and agrees.
// Snapshots are taken every 300 entries, so the log is compacted under
// the workload as it would be over a longer life.
func corruptRound(t *testing.T, queue string, cr corruption) {
	c := newFaultCluster(t, 3, clusterOpts{extra: func(int) []string {
		return []string{"--test-snapshot-threshold", "300"}
	}})
	w := standard(c, queue)
	w.waitAcked(batch, 30*time.Second)
	leader := c.leader(10 * time.Second)
	victim, role := c.others(leader)[0], "follower"
	if cr.leader {
		victim, role = leader, "leader"
	}
	if cr.snapshot {
		waitFor(t, 30*time.Second, "a snapshot on "+victim.id, func() error {
			if newestSnapshot(t, victim.data) == "" {
				return fmt.Errorf("none yet")
			}
			return nil
		})
	}
	off := victim.proc.logSize(t)
	var at time.Time
	if cr.clean {
		at = w.fault("SIGTERM %s %s, then damage its files", role, victim.id)
		victim.proc.cmd.Process.Signal(syscall.SIGTERM)
		if _, exited := victim.proc.wait(15 * time.Second); !exited {
			t.Fatalf("%s did not stop on SIGTERM", victim.id)
		}
	} else {
		at = w.fault("SIGKILL %s %s, then damage its files", role, victim.id)
		victim.kill()
	}
	if cr.leader {
		nl := c.leader(20 * time.Second)
		t.Logf("killed leader %s; %s leads", victim.id, nl.id)
	}
	t.Logf("%s: %s", victim.id, cr.corrupt(t, victim.data, w))
	victim.start(t)

	var line string
	waitFor(t, 20*time.Second, "the corruption line in "+victim.id+"'s log", func() error {
		for _, l := range strings.Split(victim.proc.logSince(t, off), "\n") {
			if strings.Contains(l, "level=ERROR") && strings.Contains(l, "data corruption detected") {
				line = l
				return nil
			}
		}
		return fmt.Errorf("not logged yet")
	})
	if !strings.Contains(line, cr.expect) || !strings.Contains(line, "moved to") || !strings.Contains(line, "corrupt-") {
		t.Errorf("corruption line does not name %q and where the files went: %s", cr.expect, line)
	}
	t.Logf("%s: %.400s", victim.id, line)
	st := waitReady(t, victim.health, 45*time.Second)
	t.Logf("%s ready again %v after it stopped (applied %d)", victim.id, time.Since(at).Round(time.Millisecond), st.Applied)
	if strings.Contains(victim.proc.logSince(t, off), "bootstrapping cluster") {
		t.Errorf("%s bootstrapped after the repair", victim.id)
	}
	w.recovered(at, batch, 30*time.Second)
	finishAndCheck(t, c, w)
}

func Test_Fault_CorruptRaftLogFollower(t *testing.T) {
	corruptRound(t, "fault.corrupt-raft-log", corruption{
		corrupt: flipRaftLog,
		expect:  "raft.db",
	})
}

func Test_Fault_CorruptRaftLogTruncated(t *testing.T) {
	corruptRound(t, "fault.corrupt-truncated", corruption{
		clean: true,
		corrupt: func(t *testing.T, dir string, _ *workload) string {
			// bbolt grows its file ahead of use: cut half of what is
			// used, not half of a tail of zeros.
			path := filepath.Join(dir, "raft", "raft.db")
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			used := len(bytes.TrimRight(b, "\x00"))
			if err := os.Truncate(path, int64(used/2)); err != nil {
				t.Fatal(err)
			}
			return fmt.Sprintf("truncated raft.db (%d bytes, %d used) to %d bytes", len(b), used, used/2)
		},
		expect: "raft.db",
	})
}

// state.db is trusted only after a clean close, so the node is stopped
// with SIGTERM: the damage must be found by the checksum of a clean file.
func Test_Fault_CorruptStateDB(t *testing.T) {
	corruptRound(t, "fault.corrupt-state-db", corruption{
		clean: true,
		corrupt: func(t *testing.T, dir string, _ *workload) string {
			path := filepath.Join(dir, "state.db")
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			flipAt(t, path, fi.Size()/2, fi.Size()/3)
			return fmt.Sprintf("flipped 2 bytes of state.db (%d bytes)", fi.Size())
		},
		expect: "state.db",
	})
}

func Test_Fault_CorruptSnapshot(t *testing.T) {
	corruptRound(t, "fault.corrupt-snapshot", corruption{
		snapshot: true,
		corrupt: func(t *testing.T, dir string, _ *workload) string {
			snap := newestSnapshot(t, dir)
			if snap == "" {
				t.Fatal("no snapshot to corrupt")
			}
			path := filepath.Join(snap, "state.bin")
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			flipAt(t, path, fi.Size()/2)
			return "flipped a byte of " + filepath.Base(snap) + "/state.bin"
		},
		expect: "snapshot",
	})
}

// The leader is killed, another node leads, and the old leader's log is
// damaged before it restarts.
func Test_Fault_CorruptRaftLogLeader(t *testing.T) {
	corruptRound(t, "fault.corrupt-leader", corruption{
		leader:  true,
		corrupt: flipRaftLog,
		expect:  "raft.db",
	})
}
