package systemtest

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mcpd/mcpd/internal/lazyfs"
)

// lazyDisks puts each node's data dir on a lazyfs mount: written data that
// was not fsynced lives only in memory and a crash drops it, as a power
// loss drops the page cache.
type lazyDisks struct {
	t       *testing.T
	dir     string
	mounts  []*lazyfs.FS
	backing []string
	points  []string
}

// newLazyDisks prepares n mounts. Call it before newFaultCluster, so that
// the processes are killed before the mounts go away.
func newLazyDisks(t *testing.T, n int) *lazyDisks {
	t.Helper()
	requireNetns(t)
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatalf("the lost-write scenarios need /dev/fuse: %v", err)
	}
	d := &lazyDisks{t: t, dir: t.TempDir(), mounts: make([]*lazyfs.FS, n)}
	for k := 1; k <= n; k++ {
		b, m := filepath.Join(d.dir, fmt.Sprintf("disk%d", k)), filepath.Join(d.dir, fmt.Sprintf("n%d", k))
		for _, p := range []string{b, m} {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		d.backing, d.points = append(d.backing, b), append(d.points, m)
	}
	d.mountAll()
	t.Cleanup(func() {
		for _, m := range d.mounts {
			if m != nil {
				m.Unmount()
			}
		}
	})
	return d
}

func (d *lazyDisks) dataDir(k int) string { return filepath.Join(d.points[k-1], "data") }

func (d *lazyDisks) mountAll() {
	d.t.Helper()
	for i := range d.mounts {
		m, err := lazyfs.Mount(d.points[i], d.backing[i], nil)
		if err != nil {
			d.t.Fatalf("mount lazyfs on %s: %v", d.points[i], err)
		}
		d.mounts[i] = m
	}
}

// crashAll drops every unsynced write on every disk and mounts them again.
// Every process using the disks must be dead. It returns the bytes dropped.
func (d *lazyDisks) crashAll() int64 {
	d.t.Helper()
	var dropped int64
	for i, m := range d.mounts {
		dropped += m.Stats().PendingBytes
		if err := m.Crash(); err != nil {
			d.t.Fatalf("crash disk %d: %v", i+1, err)
		}
		d.mounts[i] = nil
	}
	d.mountAll()
	return dropped
}

// powerLoss runs the workload, then repeatedly kills every node, drops the
// unsynced writes of every disk and restarts the cluster. extra adds serve
// flags. It returns the checker's result.
func powerLoss(t *testing.T, queue string, cycles int, expectLoss bool, extra ...string) result {
	disks := newLazyDisks(t, 3)
	c := newFaultCluster(t, 3, clusterOpts{
		dataDir: disks.dataDir,
		extra:   func(int) []string { return extra },
	})
	// Producers only: the backlog sits in the queue through every power
	// loss, and consumers drain it at the end.
	w := c.workload(queue, workloadOpts{producers: 4})
	w.expectLoss = expectLoss
	w.waitAcked(batch, 30*time.Second)
	for range cycles {
		at := w.fault("power loss: SIGKILL every node, drop unsynced writes")
		for _, nd := range c.nodes {
			nd.kill()
		}
		dropped := disks.crashAll()
		t.Logf("dropped %d unsynced bytes", dropped)
		if expectLoss {
			// A broken build may have lost the messages it acknowledged
			// and more, down to the Raft state it needs to come back at
			// all; what matters is that the checker sees the losses.
			for _, nd := range c.nodes {
				nd.start(t)
			}
			if err := c.readyWithin(30 * time.Second); err != nil {
				t.Logf("the broken build did not come back after the power loss (%v): nothing can be delivered", err)
				r := w.abandon()
				r.report(t)
				return r
			}
			continue
		}
		c.startAll()
		w.recovered(at, batch, 60*time.Second)
	}
	c.lab.heal()
	c.waitAllReady(60 * time.Second)
	r := w.finish()
	if !expectLoss {
		c.converged(60 * time.Second)
	}
	r.report(t)
	return r
}

// Every node loses power at once, repeatedly: nothing acknowledged may be
// lost, which holds only if every acknowledgement follows an fsync on a
// quorum.
func Test_Fault_LostUnsyncedWrites(t *testing.T) {
	powerLoss(t, "fault.power-loss", rounds(2, 6), false)
}

// The suite catches a broken build: with fsync turned off (a test-only
// flag), a power loss drops acknowledged messages, and the checker must
// report them lost.
func Test_Fault_BrokenBuildIsCaught(t *testing.T) {
	r := powerLoss(t, "fault.broken", 1, true, "--test-unsafe-no-fsync")
	if r.Lost == 0 {
		t.Fatalf("with fsync off, a power loss lost no acknowledged message: the suite cannot tell a broken build from a sound one")
	}
	t.Logf("as intended, the checker caught the broken build: %d of %d acknowledged messages lost", r.Lost, r.Acked)
}

// readyWithin waits up to timeout for every node to be ready and returns
// the last reason one was not, instead of failing the test.
func (c *faultCluster) readyWithin(timeout time.Duration) error {
	return poll(timeout, func() error {
		for _, nd := range c.nodes {
			s, err := readyz(nd.health)
			if err != nil {
				return fmt.Errorf("%s: %w", nd.id, err)
			}
			if !s.Ready {
				return fmt.Errorf("%s not ready: %s", nd.id, s.Status)
			}
		}
		return nil
	})
}
