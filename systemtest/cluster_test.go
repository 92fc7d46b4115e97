package systemtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mcpd/mcpd/client"
)

// node is one member of a test cluster.
type node struct {
	id, host string
	proc     *proc
	health   string // host:port of /readyz
	url      string // wss URL for clients
}

// testCluster is three mcpd processes on 127.0.0.1, .2 and .3 sharing one
// set of port numbers.
type testCluster struct {
	dir   string
	ca    string
	nodes []*node
}

// startCluster starts three nodes and waits until every one is ready.
// extra flags are given to every node.
func startCluster(t *testing.T, extra ...string) *testCluster {
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

	c := &testCluster{dir: dir, ca: filepath.Join(tlsDir, "ca.pem")}
	var peers []string
	for k := 1; k <= 3; k++ {
		peers = append(peers, fmt.Sprintf("n%d=127.0.0.%d:%d", k, k, raftPort))
	}
	procs := make([]*proc, 0, 3)
	for k := 1; k <= 3; k++ {
		id, host := fmt.Sprintf("n%d", k), fmt.Sprintf("127.0.0.%d", k)
		p := &proc{
			name: id,
			bin:  bin,
			args: append([]string{"serve",
				"--node-id", id,
				"--data-dir", filepath.Join(dir, id),
				"--bind", host,
				"--peers", strings.Join(peers, ","),
				"--tls-dir", tlsDir,
				"--insecure-auth-none",
				"--port", strconv.Itoa(port),
				"--health-port", strconv.Itoa(healthPort),
				"--raft-port", strconv.Itoa(raftPort),
				"--raft-heartbeat-timeout", "500ms",
				"--raft-election-timeout", "500ms",
				"--log-level", "info",
			}, extra...),
			logPath: filepath.Join(dir, id+".log"),
		}
		c.nodes = append(c.nodes, &node{
			id:     id,
			host:   host,
			proc:   p,
			health: net.JoinHostPort(host, strconv.Itoa(healthPort)),
			url:    fmt.Sprintf("wss://%s/v1", net.JoinHostPort(host, strconv.Itoa(port))),
		})
		procs = append(procs, p)
	}
	manage(t, procs...)
	for _, n := range c.nodes {
		n.proc.start(t)
	}
	for _, n := range c.nodes {
		waitReady(t, n.health, 30*time.Second)
	}
	return c
}

// leader waits until a running node is ready and leads, and returns it.
func (c *testCluster) leader(t *testing.T, timeout time.Duration) *node {
	t.Helper()
	var leader *node
	waitFor(t, timeout, "a ready leader", func() error {
		for _, n := range c.nodes {
			if !n.proc.running() {
				continue
			}
			s, err := readyz(n.health)
			if err == nil && s.Ready && s.Role == "Leader" && s.Leader == n.id {
				leader = n
				return nil
			}
		}
		return errors.New("no running node is a ready leader")
	})
	return leader
}

func (c *testCluster) dial(t *testing.T, ctx context.Context, agent string, urls ...string) *client.Client {
	t.Helper()
	cl, err := client.Dial(ctx, client.Options{URLs: urls, Agent: agent, CAFile: c.ca})
	if err != nil {
		t.Fatalf("dial %v: %v", urls, err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// enqueue outcomes, per message index.
const (
	notTried = iota
	acked
	failed
)

func Test_System_LeaderKilledDuringEnqueue(t *testing.T) {
	const (
		total     = 5000
		producers = 8
		killAfter = 1000
		queue     = "system.failover"
		agent     = "producer"
	)
	c := startCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Second)
	defer cancel()

	old := c.leader(t, 10*time.Second)
	var followers []string
	for _, n := range c.nodes {
		if n != old {
			followers = append(followers, n.url)
		}
	}
	t.Logf("leader %s; producers connect to %v", old.id, followers)

	// Producers: each its own client, connected to followers only.
	var (
		next     atomic.Int64
		ackCount atomic.Int64
		dupCount atomic.Int64 // acks of a retry the server already had
		outcome  [total]int
		errsMu   sync.Mutex
		errs     []string
		wg       sync.WaitGroup
		killNow  = make(chan struct{})
		prodDone = make(chan struct{})
	)
	id := func(i int) string { return fmt.Sprintf("m-%05d", i) }
	started := time.Now()
	for p := range producers {
		urls := []string{followers[p%2], followers[(p+1)%2]}
		cl := c.dial(t, ctx, agent, urls...)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= total {
					return
				}
				ectx, ecancel := context.WithTimeout(ctx, 30*time.Second)
				res, err := cl.Enqueue(ectx, queue, map[string]int{"n": i}, client.WithID(id(i)))
				ecancel()
				if err != nil {
					outcome[i] = failed
					errsMu.Lock()
					errs = append(errs, fmt.Sprintf("%s: %v", id(i), err))
					errsMu.Unlock()
					continue
				}
				outcome[i] = acked
				if res.Dup {
					dupCount.Add(1)
				}
				if ackCount.Add(1) == killAfter {
					close(killNow)
				}
			}
		}()
	}
	go func() { wg.Wait(); close(prodDone) }()

	select {
	case <-killNow:
	case <-prodDone:
		t.Fatalf("producers finished with %d acks before the kill point", ackCount.Load())
	case <-ctx.Done():
		t.Fatalf("only %d acks before the deadline", ackCount.Load())
	}
	killedAt := time.Now()
	old.proc.kill()
	t.Logf("SIGKILLed leader %s after %d acks (%v into the run)", old.id, ackCount.Load(), killedAt.Sub(started).Round(time.Millisecond))

	newLeader := c.leader(t, 20*time.Second)
	if newLeader == old {
		t.Fatalf("leader is still the killed node %s", old.id)
	}
	t.Logf("new leader %s ready %v after the kill; %d acks so far", newLeader.id, time.Since(killedAt).Round(time.Millisecond), ackCount.Load())

	logOff := old.proc.logSize(t)
	old.proc.start(t)
	waitReady(t, old.health, 30*time.Second)
	t.Logf("restarted %s ready %v after the kill; %d acks so far", old.id, time.Since(killedAt).Round(time.Millisecond), ackCount.Load())

	select {
	case <-prodDone:
	case <-ctx.Done():
		t.Fatalf("producers not done before the deadline: %d acks", ackCount.Load())
	}
	attempted := map[string]bool{}
	var nAcked, nFailed int
	for i, o := range outcome {
		switch o {
		case acked:
			nAcked++
		case failed:
			nFailed++
		}
		if o != notTried {
			attempted[id(i)] = true
		}
	}
	t.Logf("enqueue: %d acknowledged (%d of them dup after a retry), %d failed or unknown, in %v",
		nAcked, dupCount.Load(), nFailed, time.Since(started).Round(time.Millisecond))
	if nFailed > 0 {
		t.Errorf("%d enqueues failed although the client retries until its 30s deadline; first: %s", nFailed, errs[0])
	}

	// Consume everything through all three nodes.
	var (
		delMu      sync.Mutex
		deliveries = map[string]int{}             // id -> deliveries
		seqs       = map[string]map[uint64]bool{} // id -> seqs it was stored under
		foreign    []string
		ackErrs    atomic.Int64
	)
	cctx, ccancel := context.WithCancel(ctx)
	var cwg sync.WaitGroup
	consumeStart := time.Now()
	for _, n := range c.nodes {
		cl := c.dial(t, ctx, "consumer-"+n.id, n.url)
		k, err := cl.Consume(ctx, queue, client.ConsumeOptions{Prefetch: 64})
		if err != nil {
			t.Fatalf("consume on %s: %v", n.id, err)
		}
		cwg.Add(1)
		go func() {
			defer cwg.Done()
			for {
				d, err := k.Next(cctx)
				if err != nil {
					return
				}
				env, err := client.ParseEnvelope(d.Msg)
				delMu.Lock()
				switch {
				case err != nil:
					foreign = append(foreign, fmt.Sprintf("seq %d: %v", d.Seq, err))
				case env.From != agent || !attempted[env.ID]:
					foreign = append(foreign, fmt.Sprintf("seq %d: id %q from %q", d.Seq, env.ID, env.From))
				default:
					deliveries[env.ID]++
					if seqs[env.ID] == nil {
						seqs[env.ID] = map[uint64]bool{}
					}
					seqs[env.ID][d.Seq] = true
				}
				delMu.Unlock()
				// Ack concurrently: prefetch bounds the acks in flight,
				// and the server commits concurrent acks together.
				cwg.Add(1)
				go func() {
					defer cwg.Done()
					if err := d.Ack(cctx); err != nil && cctx.Err() == nil {
						ackErrs.Add(1)
					}
				}()
			}
		}()
	}
	info := c.dial(t, ctx, "observer", c.nodes[0].url, c.nodes[1].url, c.nodes[2].url)
	waitFor(t, 60*time.Second, "every acknowledged message delivered and the queue drained", func() error {
		delMu.Lock()
		missing := 0
		for i, o := range outcome {
			if o == acked && deliveries[id(i)] == 0 {
				missing++
			}
		}
		delMu.Unlock()
		if missing > 0 {
			return fmt.Errorf("%d acknowledged messages not delivered yet", missing)
		}
		qctx, qcancel := context.WithTimeout(ctx, 5*time.Second)
		defer qcancel()
		s, err := info.QueueInfo(qctx, queue)
		if err != nil {
			return err
		}
		if s.Ready != 0 || s.Inflight != 0 || s.Delayed != 0 {
			return fmt.Errorf("queue.info %+v", s)
		}
		return nil
	})
	ccancel()
	cwg.Wait()

	delMu.Lock()
	var nDeliveries, dupDeliveries, dupStores int
	for _, n := range deliveries {
		nDeliveries += n
		dupDeliveries += n - 1
	}
	for _, s := range seqs {
		dupStores += len(s) - 1
	}
	for i, o := range outcome {
		if o == acked && deliveries[id(i)] == 0 {
			t.Errorf("acknowledged message %s was never delivered", id(i))
		}
	}
	for _, f := range foreign {
		t.Errorf("delivered a message outside the attempted set: %s", f)
	}
	delMu.Unlock()
	t.Logf("consume: %d deliveries of %d distinct ids in %v; %d duplicate deliveries (%d ids stored under more than one seq); %d ack errors",
		nDeliveries, len(deliveries), time.Since(consumeStart).Round(time.Millisecond), dupDeliveries, dupStores, ackErrs.Load())

	// The restarted node caught up: all three reach the same applied index.
	var applied uint64
	waitFor(t, 20*time.Second, "the same applied index on all nodes", func() error {
		var got []string
		applied = 0
		same := true
		for _, n := range c.nodes {
			s, err := readyz(n.health)
			if err != nil {
				return err
			}
			got = append(got, fmt.Sprintf("%s=%d", n.id, s.Applied))
			if applied == 0 {
				applied = s.Applied
			} else if s.Applied != applied {
				same = false
			}
		}
		if !same || applied == 0 {
			return fmt.Errorf("applied %s", strings.Join(got, " "))
		}
		return nil
	})
	t.Logf("all nodes applied index %d", applied)

	restartLog := old.proc.logSince(t, logOff)
	if !strings.Contains(restartLog, "raft state found; rejoining") {
		t.Errorf("restarted node %s did not log %q", old.id, "raft state found; rejoining")
	}
	if strings.Contains(restartLog, "bootstrapping cluster") {
		t.Errorf("restarted node %s bootstrapped over its state", old.id)
	}
}
