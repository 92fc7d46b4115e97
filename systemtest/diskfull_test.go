package systemtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Disk full: a node's data directory is a small tmpfs that a filler file
// fills up. Writes must fail with a clear error, never hang or be
// acknowledged falsely; the node must not crash, must report itself not
// ready, and must recover by itself once the filler is gone; the checker
// must find nothing acknowledged lost.

// mountTmpfs mounts a tmpfs of sizeMB at dir (created) until the test ends;
// the processes given are killed before the unmount. Not being allowed to
// mount is a failure: the test needs it.
func mountTmpfs(t *testing.T, dir string, sizeMB int, users ...*proc) {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("tmpfs mounts need Linux")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%dM,mode=0700", sizeMB), "tmpfs", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("mount -t tmpfs on %s: %v: %s (the disk-full tests must run as root, or with CAP_SYS_ADMIN)", dir, err, out)
	}
	// A lazy unmount if something still holds it.
	t.Cleanup(func() {
		for _, p := range users {
			p.kill()
		}
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Logf("umount %s: %v: %s; detaching lazily", dir, err, out)
			exec.Command("umount", "-l", dir).Run()
		}
	})
}

// tmpfsDataDirs mounts a tmpfs of sizeMB for each of n nodes and returns
// node k's data dir on it, for clusterOpts.dataDir. Call it before
// newFaultCluster, so that the processes are killed before the unmounts.
func tmpfsDataDirs(t *testing.T, n, sizeMB int) func(k int) string {
	t.Helper()
	requireNetns(t)
	dir := t.TempDir()
	for k := 1; k <= n; k++ {
		mountTmpfs(t, filepath.Join(dir, fmt.Sprintf("n%d", k)), sizeMB)
	}
	return func(k int) string { return filepath.Join(dir, fmt.Sprintf("n%d", k)) }
}

// fillDisk writes dir/filler until the filesystem is full and returns its
// path; removing it gives the space back.
func fillDisk(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling %s: %v", dir, err)
			}
			break
		}
	}
	// Small writes too, until not even a page is left.
	for {
		if _, err := f.Write(buf[:4096]); err != nil {
			break
		}
	}
	return path
}

// waitNotReadyNoSpace waits until the node says it is not ready because
// its disk is full.
func waitNotReadyNoSpace(t *testing.T, health string) string {
	t.Helper()
	var reason string
	waitFor(t, 30*time.Second, "/readyz on "+health+" to report the full disk", func() error {
		s, err := readyz(health)
		if err != nil {
			return err
		}
		if s.Ready || !strings.Contains(s.Reason, "no space left on device") {
			return fmt.Errorf("ready=%v reason %q", s.Ready, s.Reason)
		}
		reason = s.Reason
		return nil
	})
	return reason
}

// noSpaceErrors returns the ERROR lines about a full disk that p logged
// since off.
func noSpaceErrors(p *proc, t *testing.T, off int64) []string {
	var out []string
	for _, l := range strings.Split(p.logSince(t, off), "\n") {
		if strings.Contains(l, "level=ERROR") && strings.Contains(l, "no_space=true") {
			out = append(out, l)
		}
	}
	return out
}

// logLevels logs how many ERROR and WARN lines p wrote since off.
func logLevels(t *testing.T, p *proc, off int64) {
	t.Helper()
	counts := map[string]int{}
	for _, l := range strings.Split(p.logSince(t, off), "\n") {
		for _, lv := range []string{"level=ERROR", "level=WARN"} {
			if strings.Contains(l, lv) {
				counts[lv]++
			}
		}
	}
	t.Logf("%s since the disk filled: %d ERROR and %d WARN lines", p.name, counts["level=ERROR"], counts["level=WARN"])
}

// servesWrites checks that a write through node nd alone is acknowledged.
func servesWrites(t *testing.T, c *faultCluster, nd *fnode) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cl := c.dial(ctx, "probe", nd.url)
	if _, err := cl.Enqueue(ctx, "fault.probe", map[string]string{"probe": nd.id}); err != nil {
		t.Errorf("write through %s after its repair: %v", nd.id, err)
	}
}

// diskFull fills the data disk of a follower, or of the leader, under a
// workload that uses only the other two nodes, checks that the node says
// why it is not ready without exiting while the others go on, gives the
// space back and checks that it is ready and serves again.
func diskFull(t *testing.T, queue string, leader bool) {
	// The filler takes whatever space there is; the size is for what the
	// node itself writes. A node catching up after the fault may wait
	// for raft's replication backoff (up to 10s) while the others go
	// on at their full rate, so it must hold minutes of the workload.
	c := newFaultCluster(t, 3, clusterOpts{dataDir: tmpfsDataDirs(t, 3, 256)})
	ld := c.leader(10 * time.Second)
	full, role := c.others(ld)[0], "follower"
	if leader {
		full, role = ld, "leader"
	}
	var healthy []string
	for _, nd := range c.others(full) {
		healthy = append(healthy, nd.url)
	}
	spread := func(i int) []string { return append(slices.Clone(healthy[i%2:]), healthy[:i%2]...) }
	w := c.workload(queue, workloadOpts{producers: 4, consumers: 2, producerURLs: spread, consumerURLs: spread})
	w.waitAcked(batch, 30*time.Second)

	off := full.proc.logSize(t)
	at := w.fault("fill the data disk of %s %s", role, full.id)
	filler := fillDisk(t, full.data)
	if leader {
		var nl *fnode
		waitFor(t, 30*time.Second, "leadership to move off the full disk", func() error {
			for _, nd := range c.others(full) {
				s, err := readyz(nd.health)
				if err == nil && s.Ready && s.Role == "Leader" {
					nl = nd
					return nil
				}
			}
			return errors.New("no new leader yet")
		})
		t.Logf("leadership moved %s -> %s %v after the disk filled", full.id, nl.id, time.Since(at).Round(time.Millisecond))
	}
	reason := waitNotReadyNoSpace(t, full.health)
	t.Logf("%s not ready %v after its disk filled: %s", full.id, time.Since(at).Round(time.Millisecond), reason)
	// Long enough for the node's retries and their backoff to run a while.
	w.recovered(at, 3*batch, 60*time.Second)
	if !full.proc.running() {
		t.Fatalf("%s exited with its disk full: %v", full.id, full.proc.state)
	}
	lines := noSpaceErrors(full.proc, t, off)
	if len(lines) == 0 {
		t.Fatalf("%s logged no ERROR line about the full disk", full.id)
	}
	t.Logf("%s logged %d disk-full ERROR lines; the first:\n%s", full.id, len(lines), lines[0])
	logLevels(t, full.proc, off)

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	waitReady(t, full.health, 40*time.Second)
	t.Logf("%s ready again %v after space returned", full.id, time.Since(freed).Round(time.Millisecond))
	if !full.proc.running() {
		t.Fatalf("%s exited: %v", full.id, full.proc.state)
	}
	servesWrites(t, c, full)
	w.more(batch, 30*time.Second)
	finishAndCheck(t, c, w)
	logDiskUse(t, full)
	if got := len(noSpaceErrors(full.proc, t, off)); !leader && got > 2*len(lines)+4 {
		t.Errorf("%s logged %d disk-full ERROR lines: one per failing store is the aim", full.id, got)
	}
}

// A follower's disk fills under load: the cluster keeps acknowledging, the
// follower says why it is not ready and stays up, and once space returns
// it catches up to the same state.
func Test_Fault_DiskFull_Follower(t *testing.T) {
	diskFull(t, "fault.diskfull-follower", false)
}

// The leader's disk fills: raft cannot store entries there, leadership
// moves to a node with space, clients go on (the node retries what was
// certainly not applied), and the old leader recovers once space returns.
func Test_Fault_DiskFull_Leader(t *testing.T) {
	diskFull(t, "fault.diskfull-leader", true)
}

// devCluster is a one-node cluster of a `serve --dev` node (devNode) with
// its data dir on a tmpfs of sizeMB, started and ready. A dev node takes
// no --peers, so newFaultCluster cannot start it; it has no netLab, and
// the workload and the checker use it like any fault cluster.
func devCluster(t *testing.T, sizeMB int) *faultCluster {
	t.Helper()
	p, dataDir, health, url := devNode(t)
	mountTmpfs(t, dataDir, sizeMB, p)
	c := &faultCluster{t: t, dir: filepath.Dir(dataDir), ca: filepath.Join(dataDir, "tls", "ca.pem"),
		nodes: []*fnode{{k: 1, id: "n1", proc: p, data: dataDir, health: health, url: url}}}
	c.startAll()
	return c
}

// A dev node whose disk fills: an enqueue gets a clear error within the
// submit timeout (no hang, no crash, no ack), and enqueues work again once
// space returns, with every earlier acknowledged message still there.
func Test_Fault_DiskFull_DevNode(t *testing.T) {
	const queue = "fault.diskfull-dev"
	c := devCluster(t, 64)
	nd := c.node(1)
	w := c.workload(queue, workloadOpts{producers: 2, consumers: 1})
	w.waitAcked(batch, 30*time.Second)

	off := nd.proc.logSize(t)
	at := w.fault("fill the dev node's data disk")
	filler := fillDisk(t, nd.data)
	// A raw connection shows the server's own answer (the client library
	// would retry unavailable).
	rc := dialRaw(t, nd.url, c.ca, "probe")
	var (
		code     string
		answered time.Duration
	)
	for i := 0; ; i++ {
		id := fmt.Sprintf("full-%03d", i)
		start := time.Now()
		rc.write(map[string]any{"op": "enqueue", "rid": 10 + i, "queue": queue + ".probe",
			"msg": map[string]any{"id": id, "from": "probe", "ts": time.Now().UnixMilli(), "body": map[string]int{"n": i}}})
		var m map[string]any
		for {
			var err error
			m, err = nextWithin(rc, 20*time.Second)
			if err != nil {
				t.Fatalf("enqueue %s with the disk full: no answer within 20s (%v)", id, err)
			}
			if m["rid"] == float64(10+i) {
				break
			}
		}
		answered = time.Since(start)
		if m["op"] == "ok" {
			// Space for this one was still found (bbolt reuses free
			// pages); the next fills it.
			if i > 200 {
				t.Fatalf("200 enqueues acknowledged with the disk full")
			}
			continue
		}
		code, _ = m["code"].(string)
		t.Logf("enqueue with the disk full answered in %v: %v", answered.Round(time.Millisecond), m)
		break
	}
	if code != "unavailable" {
		t.Errorf("error code %q with the disk full, want unavailable", code)
	}
	if answered > 15*time.Second {
		t.Errorf("the error took %v: longer than the 10s submit timeout allows", answered)
	}
	reason := waitNotReadyNoSpace(t, nd.health)
	t.Logf("not ready: %s", reason)
	if !nd.proc.running() {
		t.Fatalf("dev node exited with its disk full: %v", nd.proc.state)
	}
	if len(noSpaceErrors(nd.proc, t, off)) == 0 {
		t.Fatalf("no ERROR line about the full disk in the log")
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	waitReady(t, nd.health, 30*time.Second)
	w.recovered(at, batch, 30*time.Second)
	t.Logf("enqueues work again %v after space returned", time.Since(freed).Round(time.Millisecond))
	finishAndCheck(t, c, w)
	logDiskUse(t, nd)
}

// logDiskUse logs how much of its disk a node's data uses.
func logDiskUse(t *testing.T, nd *fnode) {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(nd.data, &st); err != nil {
		t.Errorf("statfs %s: %v", nd.data, err)
		return
	}
	total, free := st.Blocks*uint64(st.Bsize), st.Bfree*uint64(st.Bsize)
	t.Logf("%s's data uses %d of %d MiB", nd.id, (total-free)>>20, total>>20)
}

// nextWithin reads one frame from a raw connection within d.
func nextWithin(c *rawConn, d time.Duration) (map[string]any, error) {
	c.ws.SetReadDeadline(time.Now().Add(d))
	_, b, err := c.ws.ReadMessage()
	if err != nil {
		return nil, err
	}
	var m map[string]any
	return m, json.Unmarshal(b, &m)
}
