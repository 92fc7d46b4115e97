package systemtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mcpd/mcpd/client"
)

// crptLoad enqueues numbered messages from a few clients connected to
// every node, recording which were acknowledged; it can be paused.
type crptLoad struct {
	next   atomic.Int64
	acks   atomic.Int64
	paused atomic.Bool
	stop   chan struct{}
	wg     sync.WaitGroup

	mu    sync.Mutex
	acked map[string]bool
	errs  []string
}

func crptID(i int64) string { return fmt.Sprintf("c-%06d", i) }

func startCrptLoad(t *testing.T, ctx context.Context, c *testCluster, queue string) *crptLoad {
	l := &crptLoad{stop: make(chan struct{}), acked: map[string]bool{}}
	urls := []string{c.nodes[0].url, c.nodes[1].url, c.nodes[2].url}
	for w := range 4 {
		cl := c.dial(t, ctx, "producer", append(urls[w%3:], urls[:w%3]...)...)
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				if l.paused.Load() {
					time.Sleep(20 * time.Millisecond)
					continue
				}
				i := l.next.Add(1)
				ectx, cancel := context.WithTimeout(ctx, 30*time.Second)
				_, err := cl.Enqueue(ectx, queue, map[string]any{"id": crptID(i), "pad": strings.Repeat("x", 64)}, client.WithID(crptID(i)))
				cancel()
				l.mu.Lock()
				if err != nil {
					l.errs = append(l.errs, fmt.Sprintf("%s: %v", crptID(i), err))
				} else {
					l.acked[crptID(i)] = true
					l.acks.Add(1)
				}
				l.mu.Unlock()
			}
		}()
	}
	return l
}

func (l *crptLoad) waitAcks(t *testing.T, n int64) {
	t.Helper()
	want := l.acks.Load() + n
	waitFor(t, 30*time.Second, fmt.Sprintf("%d more acks", n), func() error {
		if got := l.acks.Load(); got < want {
			return fmt.Errorf("%d acks, want %d", got, want)
		}
		return nil
	})
}

// pause stops new enqueues and waits for those under way.
func (l *crptLoad) pause() {
	l.paused.Store(true)
	time.Sleep(200 * time.Millisecond)
}

type crptDigest struct {
	Node    string `json:"node"`
	Applied uint64 `json:"applied"`
	Digest  string `json:"digest"`
}

func getDigest(health string) (crptDigest, error) {
	resp, err := httpClient.Get("http://" + health + "/digest")
	if err != nil {
		return crptDigest{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return crptDigest{}, fmt.Errorf("/digest on %s: %s", health, resp.Status)
	}
	var d crptDigest
	return d, json.NewDecoder(resp.Body).Decode(&d)
}

// waitSameDigest waits until the three nodes report the same applied
// index and state digest.
func waitSameDigest(t *testing.T, c *testCluster) crptDigest {
	t.Helper()
	var first crptDigest
	waitFor(t, 30*time.Second, "the same applied index and digest on every node", func() error {
		var ds []crptDigest
		for _, n := range c.nodes {
			d, err := getDigest(n.health)
			if err != nil {
				return err
			}
			ds = append(ds, d)
		}
		for _, d := range ds[1:] {
			if d.Applied != ds[0].Applied || d.Digest != ds[0].Digest {
				return fmt.Errorf("%+v", ds)
			}
		}
		first = ds[0]
		return nil
	})
	return first
}

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
func flipRaftDB(t *testing.T, path string, l *crptLoad) string {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	offs := []int64{int64(len(b) / 2)}
	last := l.next.Load()
	for i, found := last, 0; i > last-5000 && i > 0 && found < 20; i-- {
		id := []byte(crptID(i))
		if bytes.Contains(b, id) {
			found++
		}
		for k, j := 0, 0; ; {
			k = bytes.Index(b[j:], id)
			if k < 0 {
				break
			}
			offs = append(offs, int64(j+k+len(id)-1))
			j += k + len(id)
		}
	}
	flipAt(t, path, offs...)
	return fmt.Sprintf("flipped %d bytes of raft.db (%d bytes)", len(offs), len(b))
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

// A stopped node whose raft log, snapshot or state.db was damaged on
// disk detects it at restart, says so in one line, moves the damaged
// files aside, repairs itself from its peers or its own intact data, and
// ends with the same state as the others; nothing acknowledged is lost.
func Test_System_CorruptMinorityRepairsFromPeers(t *testing.T) {
	const queue = "system.corrupt"
	c := startCluster(t, "--test-snapshot-threshold", "300")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	load := startCrptLoad(t, ctx, c, queue)
	defer func() {
		select {
		case <-load.stop:
		default:
			close(load.stop)
		}
	}()

	// Consume (and ack) some of the messages as the load goes on.
	var (
		delMu     sync.Mutex
		delivered = map[string]int{}
	)
	consume := func(t *testing.T, n int) {
		t.Helper()
		cl := c.dial(t, ctx, "consumer", c.nodes[0].url, c.nodes[1].url, c.nodes[2].url)
		k, err := cl.Consume(ctx, queue, client.ConsumeOptions{Prefetch: 64})
		if err != nil {
			t.Fatal(err)
		}
		for got := 0; n < 0 || got < n; got++ {
			dctx, dcancel := context.WithTimeout(ctx, 3*time.Second)
			d, err := k.Next(dctx)
			dcancel()
			if err != nil {
				if n < 0 {
					break // drained
				}
				t.Fatalf("consume after %d: %v", got, err)
			}
			env, err := client.ParseEnvelope(d.Msg)
			if err != nil {
				t.Fatal(err)
			}
			delMu.Lock()
			delivered[env.ID]++
			delMu.Unlock()
			if err := d.Ack(ctx); err != nil && !client.IsStale(err) {
				t.Fatalf("ack %s: %v", env.ID, err)
			}
		}
		cl.Close()
	}

	type corruptCase struct {
		name    string
		leader  bool // damage the leader (killed first) instead of a follower
		clean   bool // SIGTERM instead of SIGKILL
		corrupt func(t *testing.T, dataDir string) string
		expect  string // in the corruption line
	}
	cases := []corruptCase{
		{name: "raft.db flipped", corrupt: func(t *testing.T, dir string) string {
			return flipRaftDB(t, filepath.Join(dir, "raft", "raft.db"), load)
		}, expect: "raft.db"},
		{name: "raft.db truncated", clean: true, corrupt: func(t *testing.T, dir string) string {
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
		}, expect: "raft.db"},
		{name: "state.db flipped", clean: true, corrupt: func(t *testing.T, dir string) string {
			path := filepath.Join(dir, "state.db")
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			flipAt(t, path, fi.Size()/2, fi.Size()/3)
			return fmt.Sprintf("flipped 2 bytes of state.db (%d bytes)", fi.Size())
		}, expect: "state.db"},
		{name: "snapshot corrupted", corrupt: func(t *testing.T, dir string) string {
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
		}, expect: "snapshot"},
		{name: "leader raft.db flipped", leader: true, corrupt: func(t *testing.T, dir string) string {
			return flipRaftDB(t, filepath.Join(dir, "raft", "raft.db"), load)
		}, expect: "raft.db"},
	}
	for _, tc := range cases {
		ok := t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			started := time.Now()
			load.waitAcks(t, 300)
			leader := c.leader(t, 20*time.Second)
			victim := leader
			if !tc.leader {
				for _, n := range c.nodes {
					if n != leader {
						victim = n
						break
					}
				}
			}
			if tc.name == "snapshot corrupted" {
				waitFor(t, 20*time.Second, "a snapshot on "+victim.id, func() error {
					if newestSnapshot(t, filepath.Join(c.dir, victim.id)) == "" {
						return fmt.Errorf("none yet")
					}
					return nil
				})
			}
			off := victim.proc.logSize(t)
			if tc.clean {
				victim.proc.cmd.Process.Signal(syscall.SIGTERM)
				if _, exited := victim.proc.wait(15 * time.Second); !exited {
					t.Fatalf("%s did not stop on SIGTERM", victim.id)
				}
			} else {
				victim.proc.kill()
			}
			if tc.leader {
				nl := c.leader(t, 20*time.Second)
				t.Logf("killed leader %s; %s leads", victim.id, nl.id)
			}
			what := tc.corrupt(t, filepath.Join(c.dir, victim.id))
			t.Logf("%s stopped (clean %v); %s", victim.id, tc.clean, what)
			victim.proc.start(t)

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
			if !strings.Contains(line, tc.expect) || !strings.Contains(line, "moved to") || !strings.Contains(line, "corrupt-") {
				t.Errorf("corruption line does not name %q and where the files went: %s", tc.expect, line)
			}
			t.Logf("%s: %.400s", victim.id, line)
			st := waitReady(t, victim.health, 45*time.Second)
			t.Logf("%s ready again %v after its restart (applied %d)", victim.id, time.Since(started).Round(time.Millisecond), st.Applied)
			if log := victim.proc.logSince(t, off); strings.Contains(log, "bootstrapping cluster") {
				t.Errorf("%s bootstrapped after the repair", victim.id)
			}

			consume(t, 100)
			load.pause()
			d := waitSameDigest(t, c)
			load.paused.Store(false)
			t.Logf("case %q: all nodes at applied %d digest %.16s, %v", tc.name, d.Applied, d.Digest, time.Since(started).Round(time.Millisecond))
		})
		if !ok {
			break
		}
	}

	close(load.stop)
	load.wg.Wait()
	consume(t, -1)
	load.mu.Lock()
	defer load.mu.Unlock()
	delMu.Lock()
	defer delMu.Unlock()
	missing := 0
	for id := range load.acked {
		if delivered[id] == 0 {
			if missing < 5 {
				t.Errorf("acknowledged message %s never delivered", id)
			}
			missing++
		}
	}
	dups := 0
	for id, n := range delivered {
		if !load.acked[id] && n > 0 {
			// A timed-out enqueue may still have committed: allowed, but
			// only for ids that were attempted.
			var i int64
			fmt.Sscanf(id, "c-%d", &i)
			if i <= 0 || i > load.next.Load() {
				t.Errorf("delivered %s, never sent", id)
			}
		}
		dups += n - 1
	}
	t.Logf("%d acknowledged, %d delivered (%d redeliveries), %d missing, %d enqueue errors", len(load.acked), len(delivered), dups, missing, len(load.errs))
	if missing > 0 {
		t.Errorf("%d acknowledged messages lost", missing)
	}
	if len(load.errs) > 0 {
		t.Logf("first enqueue error: %s", load.errs[0])
	}
}
