package systemtest

import (
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// A fourth process with a CA of its own, started with the cluster's
// --peers plus itself, never becomes part of the cluster: every handshake
// between it and the members fails (each side refuses the other's
// certificate), so its campaigns reach no member's raft. The members keep
// their term and leader and keep committing, their replicas converge on
// three, and the rogue commits and applies nothing.
func Test_Fault_RogueNode(t *testing.T) {
	c := newFaultCluster(t, 3, clusterOpts{spare: 1})
	w := standard(c, "fault.rogue-node")
	w.waitAcked(batch, 30*time.Second)
	leader := c.leader(10 * time.Second)
	before, err := readyz(leader.health)
	if err != nil {
		t.Fatal(err)
	}

	const k = 4
	ip := c.lab.addr(k)
	rogueTLS := filepath.Join(c.dir, "rogue-tls")
	runMcpd(t, "tls", "init", "--dir", rogueTLS, "--node", "n4", "--host", ip)
	health := net.JoinHostPort(ip, "4434")
	rogue := &proc{name: "rogue n4", bin: "ip", logPath: filepath.Join(c.dir, "n4.log"), args: c.lab.wrap(k, mcpdBinary(t), "serve",
		"--node-id", "n4",
		"--data-dir", filepath.Join(c.dir, "n4"),
		"--bind", ip,
		"--peers", c.peers+",n4="+net.JoinHostPort(ip, "4438"),
		"--tls-dir", rogueTLS,
		"--insecure-auth-none",
		"--raft-heartbeat-timeout", faultRaftTimeout.String(),
		"--raft-election-timeout", faultRaftTimeout.String(),
		"--log-level", "info",
	)}
	manage(t, rogue)
	offs := map[string]int64{}
	for _, nd := range c.nodes {
		offs[nd.id] = nd.proc.logSize(t)
	}
	at := w.fault("start rogue n4 at %s with a CA of its own", ip)
	rogue.start(t)

	// It campaigns, and every member turns its connections away.
	waitFor(t, 30*time.Second, "the rogue campaigning twice", func() error {
		if n := strings.Count(rogue.logSince(t, 0), `msg="entering candidate state"`); n < 2 {
			return fmt.Errorf("%d campaigns", n)
		}
		return nil
	})
	waitFor(t, 30*time.Second, "every member refusing the rogue", func() error {
		for _, nd := range c.nodes {
			if !logLine(nd.proc.logSince(t, 0), "refused a connection without a valid peer certificate", "remote="+ip+":") {
				return fmt.Errorf("%s has not refused %s yet", nd.id, ip)
			}
		}
		return nil
	})
	w.recovered(at, batch, 30*time.Second)

	// Every member is ready, on one term and leader: the ones of the
	// start, unless a member timed out meanwhile (a starved or paused
	// process misses heartbeats, and raft elects again: that is raft
	// working, not the rogue's doing). Then every term since must be one
	// a member campaigned in; a term only the rogue's campaigns could
	// explain would mean they reached a member's raft.
	var now status
	waitFor(t, 30*time.Second, "every member ready on one term and leader", func() error {
		var first *status
		for _, nd := range c.nodes {
			s, err := readyz(nd.health)
			if err != nil {
				return err
			}
			if !s.Ready {
				return fmt.Errorf("%s not ready: %+v", nd.id, s)
			}
			if first == nil {
				first = &s
			} else if s.Term != first.Term || s.Leader != first.Leader {
				return fmt.Errorf("%s: term %d, leader %q; %s: term %d, leader %q", nd.id, s.Term, s.Leader, c.nodes[0].id, first.Term, first.Leader)
			}
		}
		now = *first
		return nil
	})
	switch {
	case now.Term == before.Term && now.Leader != leader.id:
		t.Errorf("leader %q, was %q, in the same term %d", now.Leader, leader.id, now.Term)
	case now.Term < before.Term:
		t.Errorf("term %d, was %d", now.Term, before.Term)
	case now.Term != before.Term:
		for term := before.Term + 1; term <= now.Term; term++ {
			campaigned := false
			for _, nd := range c.nodes {
				campaigned = campaigned || campaignedIn(nd.proc.logSince(t, offs[nd.id]), term)
			}
			if !campaigned {
				t.Errorf("term %d (was %d, leader %q, was %q): no member campaigned in term %d", now.Term, before.Term, now.Leader, leader.id, term)
			}
		}
		t.Logf("a member timed out: term %d and leader %q, were %d and %q", now.Term, now.Leader, before.Term, leader.id)
	}
	s, err := readyz(health)
	if err != nil {
		t.Fatalf("rogue: %v", err)
	}
	if s.Ready || s.Leader != "" || s.Commit != 0 || s.Applied != 0 {
		t.Errorf("rogue: %+v; want no leader, nothing committed or applied", s)
	}
	if applied, _, err := digestOf(health); err != nil || applied != 0 {
		t.Errorf("rogue's /digest: applied %d, %v", applied, err)
	}
	log := rogue.logSince(t, 0)
	for _, nd := range c.nodes {
		if !logLine(log, "TLS handshake with a peer failed", "peer="+net.JoinHostPort(nd.ip, "4438")) {
			t.Errorf("the rogue's log does not show its handshake with %s failing", nd.id)
		}
	}
	if !rogue.running() {
		t.Errorf("the rogue exited: %v", rogue.state)
	}
	rogue.kill()
	finishAndCheck(t, c, w)
}

// campaignedIn reports whether log has a node's raft entering the
// candidate state for term.
func campaignedIn(log string, term uint64) bool {
	want := fmt.Sprintf("term=%d", term)
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, `msg="entering candidate state"`) && slices.Contains(strings.Fields(line), want) {
			return true
		}
	}
	return false
}

// logLine reports whether a line of log holds every one of subs.
func logLine(log string, subs ...string) bool {
	for _, line := range strings.Split(log, "\n") {
		all := true
		for _, sub := range subs {
			all = all && strings.Contains(line, sub)
		}
		if all {
			return true
		}
	}
	return false
}
