package systemtest

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// netLab is a private network for one fault test: a bridge in the test's
// own namespace and, per node, a network namespace joined to the bridge by
// a veth pair. The test process reaches every node through the bridge
// address; partitions are blackhole routes inside the nodes' namespaces, so
// clients keep reaching every node while the nodes lose each other.
type netLab struct {
	t      *testing.T
	prefix string   // first three octets, "10.x.y"
	bridge string   // bridge interface in the test's namespace
	ns     []string // one namespace per node, index 0 is node 1

	mu    sync.Mutex
	holes map[[2]int]bool // blackholed (from, to) node index pairs
}

var labSeq atomic.Int64

// requireNetns fails the test when network namespaces cannot be used: the
// fault suite needs root on Linux and the ip tool. It fails rather than
// skips, so a CI machine that cannot run the suite is noticed.
func requireNetns(t *testing.T) {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Fatalf("the fault suite needs Linux network namespaces; this is %s", runtime.GOOS)
	}
	if os.Geteuid() != 0 {
		t.Fatalf("the fault suite needs root (network namespaces, bridges, mounts); running as uid %d", os.Geteuid())
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatalf("the fault suite needs the ip tool (iproute2): %v", err)
	}
}

// newNetLab creates the bridge and n namespaces and removes them when the
// test ends (after the processes, which are registered later, are gone).
func newNetLab(t *testing.T, n int) *netLab {
	t.Helper()
	requireNetns(t)
	sweepStaleLabs()
	seq := labSeq.Add(1)
	pid := os.Getpid()
	tag := fmt.Sprintf("%dx%d", pid%100000, seq%1000)
	l := &netLab{
		t:      t,
		prefix: fmt.Sprintf("10.%d.%d", 100+pid%100, (pid/100+int(seq))%256),
		bridge: "mcb" + tag,
		holes:  map[[2]int]bool{},
	}
	t.Cleanup(l.destroy)
	l.ip("link", "add", l.bridge, "type", "bridge")
	l.ip("addr", "add", l.prefix+".1/24", "dev", l.bridge)
	l.ip("link", "set", l.bridge, "up")
	for k := 1; k <= n; k++ {
		ns := fmt.Sprintf("mcpdst-%d-%s-n%d", pid, tag, k)
		veth := fmt.Sprintf("mcv%sn%d", tag, k)
		l.ns = append(l.ns, ns)
		l.ip("netns", "add", ns)
		l.ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
		l.ip("link", "set", veth, "master", l.bridge, "up")
		l.ip("-n", ns, "addr", "add", l.addr(k)+"/24", "dev", "eth0")
		l.ip("-n", ns, "link", "set", "eth0", "up")
		l.ip("-n", ns, "link", "set", "lo", "up")
	}
	return l
}

// addr is node k's address (k counts from 1).
func (l *netLab) addr(k int) string { return l.prefix + "." + strconv.Itoa(10+k) }

// wrap returns the command line that runs argv inside node k's namespace.
// ip netns exec keeps the process id, so signals reach mcpd itself.
func (l *netLab) wrap(k int, argv ...string) []string {
	return append([]string{"netns", "exec", l.ns[k-1]}, argv...)
}

func (l *netLab) ip(args ...string) {
	l.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		l.t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// cut makes traffic from node a to node b vanish (one direction).
func (l *netLab) cut(a, b int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.holes[[2]int{a, b}] {
		return
	}
	l.holes[[2]int{a, b}] = true
	l.ip("-n", l.ns[a-1], "route", "add", "blackhole", l.addr(b)+"/32")
}

// partition splits the nodes into the given groups: nodes in different
// groups cannot reach each other in either direction; every other link is
// healed first. Nodes not named stay connected to everyone.
func (l *netLab) partition(groups ...[]int) {
	l.heal()
	group := map[int]int{}
	for g, members := range groups {
		for _, k := range members {
			group[k] = g + 1
		}
	}
	for a := 1; a <= len(l.ns); a++ {
		for b := 1; b <= len(l.ns); b++ {
			if a != b && group[a] != 0 && group[b] != 0 && group[a] != group[b] {
				l.cut(a, b)
			}
		}
	}
}

// isolate cuts node k off from every other node (clients still reach it).
func (l *netLab) isolate(k int) {
	var rest []int
	for j := 1; j <= len(l.ns); j++ {
		if j != k {
			rest = append(rest, j)
		}
	}
	l.partition([]int{k}, rest)
}

// heal removes every blackhole.
func (l *netLab) heal() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for h := range l.holes {
		l.ip("-n", l.ns[h[0]-1], "route", "del", "blackhole", l.addr(h[1])+"/32")
		delete(l.holes, h)
	}
}

func (l *netLab) destroy() {
	for _, ns := range l.ns {
		exec.Command("ip", "netns", "del", ns).Run()
	}
	exec.Command("ip", "link", "del", l.bridge).Run()
}

var sweepOnce sync.Once

// sweepStaleLabs removes namespaces and bridges left by a test process that
// died without cleaning up (their names carry its pid).
func sweepStaleLabs() {
	sweepOnce.Do(func() {
		out, err := exec.Command("ip", "netns", "list").Output()
		if err != nil {
			return
		}
		stale := map[string]bool{} // tags of dead runs
		for _, line := range strings.Split(string(out), "\n") {
			name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
			parts := strings.Split(name, "-")
			if len(parts) != 4 || parts[0] != "mcpdst" {
				continue
			}
			pid, err := strconv.Atoi(parts[1])
			if err != nil || pid == os.Getpid() {
				continue
			}
			if _, err := os.Stat("/proc/" + parts[1]); err == nil {
				continue
			}
			exec.Command("ip", "netns", "del", name).Run()
			stale[parts[2]] = true
		}
		for tag := range stale {
			exec.Command("ip", "link", "del", "mcb"+tag).Run()
		}
	})
}
