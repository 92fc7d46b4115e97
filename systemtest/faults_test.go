package systemtest

import (
	"context"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/mcpd/mcpd/client"
)

// The fault suite. Each Test_Fault_* test starts a cluster whose nodes live
// in their own network namespaces, runs producers and consumers, injects
// one class of fault (or, in Test_Fault_Combined, all of them), heals, and
// hands the history to the total-queue checker: nothing acknowledged may
// be lost, nothing delivered that was never sent, and every replica must
// end with the same applied index and state digest.
//
// `make test` runs each scenario briefly; `make chaos` (MCPD_CHAOS=1) runs
// more rounds and the larger clusters.

// chaos reports whether the long version of the suite was asked for.
func chaos() bool { return os.Getenv("MCPD_CHAOS") != "" }

// rounds is short in make test and long in make chaos.
func rounds(short, long int) int {
	if chaos() {
		return long
	}
	return short
}

// faultRand is the scenario's random source; its seed is logged and
// MCPD_FAULT_SEED replays it.
func faultRand(t *testing.T) *rand.Rand {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("MCPD_FAULT_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("MCPD_FAULT_SEED: %v", err)
		}
		seed = v
	}
	t.Logf("fault seed %d (MCPD_FAULT_SEED=%d replays the schedule)", seed, seed)
	return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
}

// batch is the number of acknowledged enqueues between faults.
var batch = int64(rounds(150, 500))

// standard is the default workload: four producers and two consumers
// spread over the nodes.
func standard(c *faultCluster, queue string) *workload {
	return c.workload(queue, workloadOpts{producers: 4, consumers: 2})
}

// finishAndCheck heals, drains, checks and compares the replicas.
func finishAndCheck(t *testing.T, c *faultCluster, w *workload) {
	t.Helper()
	if c.lab != nil { // nil for a dev node (devCluster)
		c.lab.heal()
	}
	for _, nd := range c.nodes {
		nd.resume()
		if !nd.proc.running() {
			nd.start(t)
		}
	}
	c.waitAllReady(60 * time.Second)
	r := w.finish()
	applied, digest := c.converged(60 * time.Second)
	r.report(t)
	t.Logf("replicas agree: applied %d, digest %s", applied, digest[:16])
}

// nodeFault is a fault injected into one node: inject starts it (and
// waits for what must follow, such as a new leader), check runs once the
// rest of the cluster has made progress, repair ends it.
type nodeFault struct {
	name                  string
	inject, check, repair func(c *faultCluster, nd *fnode)
}

var (
	sigkill = nodeFault{
		name: "SIGKILL",
		inject: func(c *faultCluster, nd *fnode) {
			nd.kill()
			c.leader(20 * time.Second)
		},
		repair: func(c *faultCluster, nd *fnode) { nd.start(c.t) },
	}
	cutOff = nodeFault{
		name:   "cut off from the other two",
		inject: func(c *faultCluster, nd *fnode) { c.lab.isolate(nd.k) },
		check:  func(c *faultCluster, nd *fnode) { minorityRefuses(c.t, c, nd) },
		repair: func(c *faultCluster, _ *fnode) { c.lab.heal() },
	}
)

// Which node a round hits, chosen from the current leader.
func theLeader(_ *faultCluster, leader *fnode) *fnode { return leader }
func aFollower(c *faultCluster, leader *fnode) *fnode { return c.others(leader)[0] }

// nodeFaultRounds runs rounds of f on one node chosen by pick: the rest
// of the cluster must make progress, then the node is repaired and must
// become ready again.
func nodeFaultRounds(t *testing.T, queue string, n int, f nodeFault, pick func(*faultCluster, *fnode) *fnode) {
	c := newFaultCluster(t, 3, clusterOpts{})
	w := standard(c, queue)
	w.waitAcked(batch, 30*time.Second)
	for range n {
		nd := pick(c, c.leader(10*time.Second))
		at := w.fault("%s: %s", nd.id, f.name)
		f.inject(c, nd)
		w.recovered(at, batch, 30*time.Second)
		if f.check != nil {
			f.check(c, nd)
		}
		f.repair(c, nd)
		waitReady(t, nd.health, 30*time.Second)
	}
	finishAndCheck(t, c, w)
}

func Test_Fault_KillLeader(t *testing.T) {
	nodeFaultRounds(t, "fault.kill-leader", rounds(2, 6), sigkill, theLeader)
}

func Test_Fault_KillFollower(t *testing.T) {
	nodeFaultRounds(t, "fault.kill-follower", rounds(2, 6), sigkill, aFollower)
}

func Test_Fault_KillAll(t *testing.T) {
	c := newFaultCluster(t, 3, clusterOpts{})
	w := standard(c, "fault.kill-all")
	w.waitAcked(batch, 30*time.Second)
	for range rounds(1, 4) {
		at := w.fault("SIGKILL every node")
		for _, nd := range c.nodes {
			nd.kill()
		}
		c.startAll()
		w.recovered(at, batch, 60*time.Second)
	}
	finishAndCheck(t, c, w)
}

// The leader is stopped past the election timeout, a new leader takes
// over, and the old one resumes believing it leads: it must not
// acknowledge anything it cannot commit (the checker would find it lost).
func Test_Fault_PauseLeader(t *testing.T) {
	c := newFaultCluster(t, 3, clusterOpts{})
	w := standard(c, "fault.pause-leader")
	w.waitAcked(batch, 30*time.Second)
	for range rounds(2, 6) {
		old := c.leader(10 * time.Second)
		at := w.fault("SIGSTOP leader %s", old.id)
		old.pause()
		nl := c.leader(20 * time.Second)
		w.recovered(at, batch, 30*time.Second)
		t.Logf("new leader %s; SIGCONT %s", nl.id, old.id)
		old.resume()
		waitReady(t, old.health, 30*time.Second)
	}
	finishAndCheck(t, c, w)
}

// minorityRefuses checks that a write through node nd, cut off from a
// quorum, fails with unavailable.
func minorityRefuses(t *testing.T, c *faultCluster, nd *fnode) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Second)
	defer cancel()
	cl := c.dial(ctx, "minority-probe", nd.url)
	_, err := cl.Enqueue(ctx, "fault.minority-probe", map[string]string{"probe": "x"})
	if err == nil {
		t.Errorf("node %s, cut off from a quorum, acknowledged a write", nd.id)
		return
	}
	if !client.IsCode(err, "unavailable") {
		t.Errorf("write through cut-off node %s: want unavailable, got %v", nd.id, err)
		return
	}
	t.Logf("cut-off node %s refuses writes: %v", nd.id, err)
}

func Test_Fault_IsolateLeader(t *testing.T) {
	nodeFaultRounds(t, "fault.isolate-leader", rounds(1, 4), cutOff, theLeader)
}

func Test_Fault_Partition21(t *testing.T) {
	nodeFaultRounds(t, "fault.partition-2-1", rounds(1, 4), cutOff, aFollower)
}

func Test_Fault_Partition111(t *testing.T) {
	c := newFaultCluster(t, 3, clusterOpts{})
	w := standard(c, "fault.partition-1-1-1")
	w.waitAcked(batch, 30*time.Second)
	w.fault("partition every node from every other")
	c.lab.partition([]int{1}, []int{2}, []int{3})
	minorityRefuses(t, c, c.node(1+rand.IntN(3)))
	c.lab.heal()
	w.recovered(time.Now(), batch, 30*time.Second) // timed from the heal
	finishAndCheck(t, c, w)
}

// randomPartition cuts the cluster at random: one node isolated, a random
// split into two sides, or every node alone.
func randomPartition(r *rand.Rand, c *faultCluster) string {
	n := len(c.nodes)
	switch r.IntN(3) {
	case 0:
		k := 1 + r.IntN(n)
		c.lab.isolate(k)
		return "isolate n" + strconv.Itoa(k)
	case 1:
		var a, b []int
		for _, k := range r.Perm(n) {
			if len(a) < n/2 {
				a = append(a, k+1)
			} else {
				b = append(b, k+1)
			}
		}
		c.lab.partition(a, b)
		return "split " + ints(a) + " | " + ints(b)
	default:
		var gs [][]int
		for k := 1; k <= n; k++ {
			gs = append(gs, []int{k})
		}
		c.lab.partition(gs...)
		return "every node alone"
	}
}

func ints(s []int) string {
	out := "{"
	for i, v := range s {
		if i > 0 {
			out += ","
		}
		out += "n" + strconv.Itoa(v)
	}
	return out + "}"
}

func Test_Fault_FlappingPartitions(t *testing.T) {
	r := faultRand(t)
	c := newFaultCluster(t, 3, clusterOpts{})
	w := standard(c, "fault.flapping")
	w.waitAcked(batch, 30*time.Second)
	for range rounds(8, 40) {
		w.fault("%s", randomPartition(r, c))
		time.Sleep(time.Duration(300+r.IntN(1200)) * time.Millisecond) // the fault's duration, not a wait for a condition
		c.lab.heal()
		time.Sleep(time.Duration(r.IntN(600)) * time.Millisecond)
	}
	at := w.fault("healed for good")
	w.recovered(at, batch, 30*time.Second)
	finishAndCheck(t, c, w)
}

// Five nodes: the leader killed, then a 2/3 split with the new leader on
// the minority side.
func Test_Fault_FiveNodes(t *testing.T) {
	c := newFaultCluster(t, 5, clusterOpts{})
	w := c.workload("fault.five", workloadOpts{producers: 5, consumers: 3})
	w.waitAcked(batch, 30*time.Second)
	for range rounds(1, 4) {
		old := c.leader(10 * time.Second)
		at := w.fault("SIGKILL leader %s", old.id)
		old.kill()
		nl := c.leader(20 * time.Second)
		w.recovered(at, batch, 30*time.Second)
		var minority, majority []int
		minority = append(minority, nl.k)
		for _, nd := range c.others(nl) {
			if len(minority) < 2 && nd != old {
				minority = append(minority, nd.k)
			} else {
				majority = append(majority, nd.k)
			}
		}
		at = w.fault("partition %s | %s (leader %s on the minority side)", ints(minority), ints(majority), nl.id)
		c.lab.partition(minority, majority)
		old.start(t) // rejoins the majority side
		w.recovered(at, batch, 30*time.Second)
		minorityRefuses(t, c, nl)
		c.lab.heal()
		c.waitAllReady(30 * time.Second)
	}
	finishAndCheck(t, c, w)
}

// Every fault class at random, one after another, on five nodes in make
// chaos and three in make test: kills, pauses, partitions, whole-cluster
// crashes and power losses (the data dirs are on lazyfs disks).
func Test_Fault_Combined(t *testing.T) {
	r := faultRand(t)
	n := 3
	if chaos() {
		n = 5
	}
	disks := newLazyDisks(t, n)
	c := newFaultCluster(t, n, clusterOpts{dataDir: disks.dataDir})
	w := c.workload("fault.combined", workloadOpts{producers: 4, consumers: 2})
	w.waitAcked(batch, 30*time.Second)
	for range rounds(5, 30) {
		var at time.Time
		switch r.IntN(5) {
		case 0:
			nd := c.node(1 + r.IntN(n))
			at = w.fault("SIGKILL %s", nd.id)
			nd.kill()
			nd.start(t)
		case 1:
			nd := c.leader(20 * time.Second)
			at = w.fault("SIGSTOP leader %s for a while", nd.id)
			nd.pause()
			c.leader(20 * time.Second)
			nd.resume()
		case 2:
			at = w.fault("%s", randomPartition(r, c))
			time.Sleep(time.Duration(500+r.IntN(1500)) * time.Millisecond) // the fault's duration
			c.lab.heal()
		case 3:
			at = w.fault("SIGKILL every node")
			for _, nd := range c.nodes {
				nd.kill()
			}
			for _, nd := range c.nodes {
				nd.start(t)
			}
		default:
			at = w.fault("power loss of every node")
			for _, nd := range c.nodes {
				nd.kill()
			}
			t.Logf("dropped %d unsynced bytes", disks.crashAll())
			for _, nd := range c.nodes {
				nd.start(t)
			}
		}
		w.recovered(at, 50, 60*time.Second)
	}
	finishAndCheck(t, c, w)
}

// One producer, one queue, one consumer: the protocol promises FIFO order,
// and porcupine checks the history is a linearizable FIFO queue while
// leaders are killed. Both clients use a node that stays up, so nothing is
// redelivered.
func Test_Fault_OrderUnderLeaderKills(t *testing.T) {
	c := newFaultCluster(t, 3, clusterOpts{})
	ld := c.leader(10 * time.Second)
	stay := c.others(ld)[0]
	only := func(int) []string { return []string{stay.url} }
	w := c.workload("fault.order", workloadOpts{producers: 1, consumers: 1, ordered: true, producerURLs: only, consumerURLs: only})
	w.waitAcked(100, 30*time.Second)
	for range rounds(2, 6) {
		old := c.leader(10 * time.Second)
		if old == stay {
			// Move leadership off the node the clients use.
			at := w.fault("SIGKILL %s (the clients' node leads; killing another)", c.others(stay)[0].id)
			v := c.others(stay)[0]
			v.kill()
			w.recovered(at, 50, 30*time.Second)
			v.start(t)
			waitReady(t, v.health, 30*time.Second)
			continue
		}
		at := w.fault("SIGKILL leader %s", old.id)
		old.kill()
		c.leader(20 * time.Second)
		w.recovered(at, 100, 30*time.Second)
		old.start(t)
		waitReady(t, old.health, 30*time.Second)
	}
	finishAndCheck(t, c, w)
}

// delayedDelivery enqueues a message with a delay and returns how long,
// by the test's clock, it took to be delivered.
func delayedDelivery(t *testing.T, c *faultCluster, queue string, delay time.Duration) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl := c.dial(ctx, "clock-probe", c.urls(0)...)
	k, err := cl.Consume(ctx, queue, client.ConsumeOptions{Prefetch: 1})
	if err != nil {
		t.Fatalf("consume: %v", err)
	}
	defer k.Cancel(ctx)
	start := time.Now()
	if _, err := cl.Enqueue(ctx, queue, map[string]string{"probe": "delay"}, client.WithDelay(delay.Milliseconds())); err != nil {
		t.Fatalf("enqueue: %v", err)
	}
	d, err := k.Next(ctx)
	if err != nil {
		t.Fatalf("delayed message not delivered: %v", err)
	}
	took := time.Since(start)
	if err := d.Ack(ctx); err != nil {
		t.Fatalf("ack: %v", err)
	}
	return took
}

// leaseExpiry takes a delivery, never acks it, and returns how long it took
// to be delivered again.
func leaseExpiry(t *testing.T, c *faultCluster, queue string, lease time.Duration) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl := c.dial(ctx, "lease-probe", c.urls(0)...)
	if _, err := cl.Enqueue(ctx, queue, map[string]string{"probe": "lease"}); err != nil {
		t.Fatalf("enqueue: %v", err)
	}
	k, err := cl.Consume(ctx, queue, client.ConsumeOptions{Prefetch: 2, LeaseMs: int(lease.Milliseconds())})
	if err != nil {
		t.Fatalf("consume: %v", err)
	}
	defer k.Cancel(ctx)
	first, err := k.Next(ctx)
	if err != nil {
		t.Fatalf("first delivery: %v", err)
	}
	got := time.Now()
	again, err := k.Next(ctx)
	if err != nil {
		t.Fatalf("no redelivery after the lease: %v", err)
	}
	took := time.Since(got)
	if again.Seq != first.Seq {
		t.Fatalf("redelivered seq %d, want %d", again.Seq, first.Seq)
	}
	if err := again.Ack(ctx); err != nil {
		t.Fatalf("ack: %v", err)
	}
	return took
}

// leadBy kills leaders until nd leads (each killed node restarts).
func leadBy(t *testing.T, c *faultCluster, want func(*fnode) bool, what string) *fnode {
	t.Helper()
	for range 20 {
		l := c.leader(20 * time.Second)
		if want(l) {
			return l
		}
		l.kill()
		c.leader(20 * time.Second)
		l.start(t)
		waitReady(t, l.health, 30*time.Second)
	}
	t.Fatalf("could not make %s lead", what)
	return nil
}

// One node's wall clock is minutes off. Time in the state machine comes
// from the leader, so delays and leases must keep their length whether the
// skewed node leads or not, and across a change of leader between the two.
func Test_Fault_ClockOffset(t *testing.T) {
	const skew = 5 * time.Minute
	c := newFaultCluster(t, 3, clusterOpts{extra: func(k int) []string {
		if k == 3 {
			return []string{"--test-clock-offset", skew.String()}
		}
		return nil
	}})
	w := standard(c, "fault.clock")
	w.waitAcked(batch, 30*time.Second)
	skewed := c.node(3)
	const (
		delay = 2 * time.Second
		lease = 2 * time.Second
		slack = 20 * time.Second // far below the skew, far above scheduling noise
	)
	within := func(what string, got, want time.Duration) {
		t.Helper()
		t.Logf("%s: %v (nominal %v)", what, got.Round(time.Millisecond), want)
		if got < want-want/4 || got > want+slack {
			t.Errorf("%s took %v; want about %v (one node's clock is off by %v)", what, got, want, skew)
		}
	}
	check := func(phase string) {
		t.Helper()
		within(phase+": delay", delayedDelivery(t, c, "fault.clock.delay", delay), delay)
		// An expired lease counts as a failed attempt: the message comes
		// back after the queue's first retry backoff (1 s).
		within(phase+": lease", leaseExpiry(t, c, "fault.clock.lease", lease), lease+time.Second)
	}

	fair := leadBy(t, c, func(n *fnode) bool { return n != skewed }, "a node with a true clock")
	check("leader " + fair.id + " (true clock)")

	// A delayed message enqueued under a true-clock leader must not fire
	// early when the skewed node takes over.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl := c.dial(ctx, "clock-handover", c.urls(0)...)
	const long = 15 * time.Second
	start := time.Now()
	if _, err := cl.Enqueue(ctx, "fault.clock.handover", map[string]string{"probe": "handover"}, client.WithDelay(long.Milliseconds())); err != nil {
		t.Fatal(err)
	}
	at := w.fault("make the skewed node %s lead", skewed.id)
	leadBy(t, c, func(n *fnode) bool { return n == skewed }, "the skewed node")
	w.recovered(at, 50, 30*time.Second)
	check("leader " + skewed.id + " (clock +" + skew.String() + ")")
	k, err := cl.Consume(ctx, "fault.clock.handover", client.ConsumeOptions{Prefetch: 1})
	if err != nil {
		t.Fatal(err)
	}
	d, err := k.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	within("delay across a change to the skewed leader", time.Since(start), long)
	d.Ack(ctx)

	at = w.fault("SIGKILL the skewed leader %s", skewed.id)
	skewed.kill()
	nl := c.leader(20 * time.Second)
	w.recovered(at, 50, 30*time.Second)
	check("leader " + nl.id + " after the skewed one")
	finishAndCheck(t, c, w)
}
