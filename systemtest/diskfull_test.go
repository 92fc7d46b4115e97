package systemtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mcpd/mcpd/client"
)

// Disk full: a node's data directory is a small tmpfs that a filler file
// fills up. Writes must fail with a clear error, never hang or be
// acknowledged falsely; the node must not crash, must report itself not
// ready, and must recover by itself once the filler is gone; nothing
// acknowledged may be lost.

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

// diskNode is one mcpd process whose data directory is a tmpfs.
type diskNode struct {
	id, data string
	proc     *proc
	health   string
	url      string
}

// startDiskCluster starts three nodes, each with its data directory on a
// tmpfs of sizeMB, and waits until all are ready.
func startDiskCluster(t *testing.T, sizeMB int) (nodes []*diskNode, ca string) {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("the three-node cluster needs 127.0.0.2 and 127.0.0.3 on loopback (Linux)")
	}
	bin := mcpdBinary(t)
	dir := t.TempDir()
	ports := freePorts(t, 3)
	port, healthPort, raftPort := ports[0], ports[1], ports[2]
	tlsDir := filepath.Join(dir, "tls")
	runMcpd(t, "tls", "init", "--dir", tlsDir, "--host", "127.0.0.1", "--host", "127.0.0.2", "--host", "127.0.0.3")
	var peers []string
	for k := 1; k <= 3; k++ {
		peers = append(peers, fmt.Sprintf("n%d=127.0.0.%d:%d", k, k, raftPort))
	}
	var procs []*proc
	for k := 1; k <= 3; k++ {
		id, host := fmt.Sprintf("n%d", k), fmt.Sprintf("127.0.0.%d", k)
		data := filepath.Join(dir, id)
		mountTmpfs(t, data, sizeMB)
		p := &proc{name: id, bin: bin, logPath: filepath.Join(dir, id+".log"), args: []string{"serve",
			"--node-id", id, "--data-dir", data, "--bind", host, "--peers", strings.Join(peers, ","),
			"--tls-dir", tlsDir, "--insecure-auth-none",
			"--port", strconv.Itoa(port), "--health-port", strconv.Itoa(healthPort), "--raft-port", strconv.Itoa(raftPort),
			"--raft-heartbeat-timeout", "500ms", "--raft-election-timeout", "500ms", "--log-level", "info"}}
		nodes = append(nodes, &diskNode{id: id, data: data, proc: p,
			health: net.JoinHostPort(host, strconv.Itoa(healthPort)),
			url:    fmt.Sprintf("wss://%s/v1", net.JoinHostPort(host, strconv.Itoa(port)))})
		procs = append(procs, p)
	}
	manage(t, procs...)
	for _, n := range nodes {
		n.proc.start(t)
	}
	for _, n := range nodes {
		waitReady(t, n.health, 30*time.Second)
	}
	return nodes, filepath.Join(tlsDir, "ca.pem")
}

func diskLeader(t *testing.T, nodes []*diskNode, timeout time.Duration) *diskNode {
	t.Helper()
	var leader *diskNode
	waitFor(t, timeout, "a ready leader", func() error {
		for _, n := range nodes {
			s, err := readyz(n.health)
			if err == nil && s.Ready && s.Role == "Leader" {
				leader = n
				return nil
			}
		}
		return errors.New("no ready leader")
	})
	return leader
}

// readyzReason fetches /readyz and returns readiness and the reason given.
func readyzReason(addr string) (ready bool, reason string, err error) {
	resp, err := httpClient.Get("http://" + addr + "/readyz")
	if err != nil {
		return false, "", err
	}
	defer resp.Body.Close()
	var body struct {
		Reason string `json:"reason"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return false, "", err
	}
	return resp.StatusCode == http.StatusOK, body.Reason, nil
}

// waitNotReadyNoSpace waits until the node says it is not ready because
// its disk is full.
func waitNotReadyNoSpace(t *testing.T, health string) string {
	t.Helper()
	var reason string
	waitFor(t, 30*time.Second, "/readyz on "+health+" to report the full disk", func() error {
		ready, r, err := readyzReason(health)
		if err != nil {
			return err
		}
		if ready || !strings.Contains(r, "no space left on device") {
			return fmt.Errorf("ready=%v reason %q", ready, r)
		}
		reason = r
		return nil
	})
	return reason
}

// diskDigest is the node's /digest.
func diskDigest(health string) (applied uint64, digest string, err error) {
	resp, err := httpClient.Get("http://" + health + "/digest")
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	var d struct {
		Applied uint64 `json:"applied"`
		Digest  string `json:"digest"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&d); err != nil {
		return 0, "", err
	}
	return d.Applied, d.Digest, nil
}

// waitConverged waits until every node reports the same applied index and
// state digest.
func waitConverged(t *testing.T, nodes []*diskNode) {
	t.Helper()
	var last string
	waitFor(t, 40*time.Second, "the same applied index and digest on every node", func() error {
		var got []string
		seen := map[string]bool{}
		for _, n := range nodes {
			a, d, err := diskDigest(n.health)
			if err != nil {
				return err
			}
			key := fmt.Sprintf("%d/%s", a, d)
			seen[key] = true
			got = append(got, n.id+"="+key[:min(len(key), 24)])
		}
		last = strings.Join(got, " ")
		if len(seen) != 1 {
			return errors.New(last)
		}
		return nil
	})
	t.Logf("replicas agree: %s", last)
}

// producers enqueue distinct ids until stopped, each with its own client;
// only acknowledged ids are recorded.
type producers struct {
	acked  sync.Map // id -> true
	nAcked atomic.Int64
	errs   atomic.Int64
	lastEr atomic.Value
	stop   chan struct{}
	wg     sync.WaitGroup
}

func startProducers(t *testing.T, ctx context.Context, ca, queue string, n int, urls func(k int) []string) *producers {
	t.Helper()
	p := &producers{stop: make(chan struct{})}
	var next atomic.Int64
	for k := range n {
		cl, err := client.Dial(ctx, client.Options{URLs: urls(k), Agent: "producer", CAFile: ca})
		if err != nil {
			t.Fatalf("dial %v: %v", urls(k), err)
		}
		t.Cleanup(func() { cl.Close() })
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			for {
				select {
				case <-p.stop:
					return
				default:
				}
				id := fmt.Sprintf("m-%06d", next.Add(1))
				ectx, cancel := context.WithTimeout(ctx, 40*time.Second)
				_, err := cl.Enqueue(ectx, queue, map[string]string{"id": id}, client.WithID(id))
				cancel()
				if err != nil {
					p.errs.Add(1)
					p.lastEr.Store(err.Error())
					continue
				}
				p.acked.Store(id, true)
				p.nAcked.Add(1)
			}
		}()
	}
	t.Cleanup(p.halt)
	return p
}

func (p *producers) halt() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	p.wg.Wait()
}

// waitAcks waits until at least n more enqueues have been acknowledged.
func (p *producers) waitAcks(t *testing.T, n int64, timeout time.Duration, what string) {
	t.Helper()
	target := p.nAcked.Load() + n
	waitFor(t, timeout, what, func() error {
		if got := p.nAcked.Load(); got < target {
			return fmt.Errorf("%d acks, want %d (%d errors, last %v)", got, target, p.errs.Load(), p.lastEr.Load())
		}
		return nil
	})
}

// drain consumes the queue through url until every acknowledged id was
// delivered.
func (p *producers) drain(t *testing.T, ctx context.Context, ca, url, queue string) {
	t.Helper()
	cl, err := client.Dial(ctx, client.Options{URLs: []string{url}, Agent: "consumer", CAFile: ca})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	k, err := cl.Consume(ctx, queue, client.ConsumeOptions{Prefetch: 256})
	if err != nil {
		t.Fatal(err)
	}
	missing := map[string]bool{}
	p.acked.Range(func(k, _ any) bool { missing[k.(string)] = true; return true })
	total := len(missing)
	dctx, cancel := context.WithTimeout(ctx, 40*time.Second)
	defer cancel()
	for len(missing) > 0 {
		d, err := k.Next(dctx)
		if err != nil {
			t.Fatalf("drain: %d of %d acknowledged messages never delivered (%v)", len(missing), total, err)
		}
		env, err := client.ParseEnvelope(d.Msg)
		if err != nil {
			t.Fatalf("delivery seq %d: %v", d.Seq, err)
		}
		delete(missing, env.ID)
		go d.Ack(dctx)
	}
	t.Logf("drained: all %d acknowledged messages delivered", total)
}

// errorLines returns the log lines since off that are ERROR lines about
// a full disk.
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

// A follower's disk fills under load: the cluster keeps acknowledging, the
// follower says why it is not ready and stays up, and once space returns
// it catches up to the same state.
func Test_System_DiskFull_Follower(t *testing.T) {
	nodes, ca := startDiskCluster(t, 48)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	leader := diskLeader(t, nodes, 10*time.Second)
	var full, other *diskNode
	for _, n := range nodes {
		if n != leader {
			if full == nil {
				full = n
			} else {
				other = n
			}
		}
	}
	const queue = "system.diskfull.follower"
	p := startProducers(t, ctx, ca, queue, 4, func(k int) []string {
		if k%2 == 0 {
			return []string{leader.url, other.url}
		}
		return []string{other.url, leader.url}
	})
	p.waitAcks(t, 200, 20*time.Second, "acks before the disk fills")

	off := full.proc.logSize(t)
	filler := fillDisk(t, full.data)
	filled := time.Now()
	reason := waitNotReadyNoSpace(t, full.health)
	t.Logf("%s not ready %v after its disk filled: %s", full.id, time.Since(filled).Round(time.Millisecond), reason)
	p.waitAcks(t, 500, 30*time.Second, "acks while a follower's disk is full")
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
	p.waitAcks(t, 100, 20*time.Second, "acks after the recovery")
	p.halt()
	t.Logf("producers: %d acknowledged, %d errors (last %v)", p.nAcked.Load(), p.errs.Load(), p.lastEr.Load())
	waitConverged(t, nodes)
	p.drain(t, ctx, ca, full.url, queue)
	if got := len(noSpaceErrors(full.proc, t, off)); got > 2*len(lines)+4 {
		t.Errorf("%s logged %d disk-full ERROR lines: one per failing store is the aim", full.id, got)
	}
}

// The leader's disk fills: raft cannot store entries there, leadership
// moves to a node with space, clients go on (the node retries what was
// certainly not applied), and the old leader recovers once space returns.
func Test_System_DiskFull_Leader(t *testing.T) {
	nodes, ca := startDiskCluster(t, 48)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	old := diskLeader(t, nodes, 10*time.Second)
	var others []*diskNode
	for _, n := range nodes {
		if n != old {
			others = append(others, n)
		}
	}
	const queue = "system.diskfull.leader"
	p := startProducers(t, ctx, ca, queue, 4, func(k int) []string {
		return []string{others[k%2].url, others[(k+1)%2].url}
	})
	p.waitAcks(t, 200, 20*time.Second, "acks before the disk fills")

	off := old.proc.logSize(t)
	filler := fillDisk(t, old.data)
	filled := time.Now()
	var leader *diskNode
	waitFor(t, 30*time.Second, "leadership to move off the full disk", func() error {
		for _, n := range others {
			s, err := readyz(n.health)
			if err == nil && s.Ready && s.Role == "Leader" {
				leader = n
				return nil
			}
		}
		return errors.New("no new leader yet")
	})
	t.Logf("leadership moved %s -> %s %v after the disk filled", old.id, leader.id, time.Since(filled).Round(time.Millisecond))
	reason := waitNotReadyNoSpace(t, old.health)
	t.Logf("%s not ready: %s", old.id, reason)
	p.waitAcks(t, 500, 30*time.Second, "acks after leadership moved")
	if !old.proc.running() {
		t.Fatalf("%s exited with its disk full: %v", old.id, old.proc.state)
	}
	if len(noSpaceErrors(old.proc, t, off)) == 0 {
		t.Fatalf("%s logged no ERROR line about the full disk", old.id)
	}
	logLevels(t, old.proc, off)

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	waitReady(t, old.health, 40*time.Second)
	t.Logf("%s ready again %v after space returned", old.id, time.Since(freed).Round(time.Millisecond))
	p.waitAcks(t, 100, 20*time.Second, "acks after the recovery")
	p.halt()
	t.Logf("producers: %d acknowledged, %d errors (last %v)", p.nAcked.Load(), p.errs.Load(), p.lastEr.Load())
	waitConverged(t, nodes)
	p.drain(t, ctx, ca, old.url, queue)
}

// A dev node whose disk fills: an enqueue gets a clear error within the
// submit timeout (no hang, no crash, no ack), and enqueues work again once
// space returns, with every earlier acknowledged message still there.
func Test_System_DiskFull_DevNode(t *testing.T) {
	p, dataDir, health, url := devNode(t)
	mountTmpfs(t, dataDir, 32, p)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	p.start(t)
	waitReady(t, health, 20*time.Second)
	ca := filepath.Join(dataDir, "tls", "ca.pem")
	const queue = "system.diskfull.dev"
	cl, err := client.Dial(ctx, client.Options{URLs: []string{url}, Agent: "producer", CAFile: ca})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	acked := map[string]bool{}
	for i := range 50 {
		id := fmt.Sprintf("before-%03d", i)
		if _, err := cl.Enqueue(ctx, queue, map[string]int{"n": i}, client.WithID(id)); err != nil {
			t.Fatalf("enqueue %s: %v", id, err)
		}
		acked[id] = true
	}

	off := p.logSize(t)
	filler := fillDisk(t, dataDir)
	// A raw connection shows the server's own answer (the client library
	// would retry unavailable).
	rc := dialRaw(t, url, ca, "producer")
	var code string
	var answered time.Duration
	for i := 0; ; i++ {
		id := fmt.Sprintf("full-%03d", i)
		start := time.Now()
		rc.write(map[string]any{"op": "enqueue", "rid": 10 + i, "queue": queue,
			"msg": map[string]any{"id": id, "from": "producer", "ts": time.Now().UnixMilli(), "body": map[string]int{"n": i}}})
		var m map[string]any
		for {
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
			acked[id] = true
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
	reason := waitNotReadyNoSpace(t, health)
	t.Logf("not ready: %s", reason)
	if !p.running() {
		t.Fatalf("dev node exited with its disk full: %v", p.state)
	}
	if len(noSpaceErrors(p, t, off)) == 0 {
		t.Fatalf("no ERROR line about the full disk in the log")
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	waitReady(t, health, 30*time.Second)
	for i := range 20 {
		id := fmt.Sprintf("after-%03d", i)
		ectx, ecancel := context.WithTimeout(ctx, 20*time.Second)
		_, err := cl.Enqueue(ectx, queue, map[string]int{"n": i}, client.WithID(id))
		ecancel()
		if err != nil {
			t.Fatalf("enqueue %s after space returned: %v", id, err)
		}
		acked[id] = true
	}
	t.Logf("enqueues work again %v after space returned", time.Since(freed).Round(time.Millisecond))
	pr := &producers{}
	for id := range acked {
		pr.acked.Store(id, true)
	}
	pr.drain(t, ctx, ca, url, queue)
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
