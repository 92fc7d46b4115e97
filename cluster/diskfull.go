package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/raft"
	"github.com/mcpd/mcpd/fsm"
)

// A full disk (or another write error) under the data directory. Raft's
// writes go through two guards here; state.db's commits are the FSM's
// business (fsm/commitfail.go). See DESIGN.md, "Disk full".
//
//   - The log store: a failed StoreLogs is returned to raft as a
//     *logWriteError. raft's leader answers the pending applies with it and
//     steps down; a follower rejects the AppendEntries. The entries were
//     not stored here, and a leader replicates only what it stored, so
//     mapRaftError maps it to ErrUnavailable (retried) rather than
//     ErrUnknown.
//   - The stable store (current term, vote): raft panics when it cannot
//     record a new term, so a failed write is retried here until it
//     succeeds; raft waits meanwhile, as if this node were cut off. It
//     is never reported as done when it was not.
//
// Each guard logs one ERROR line when writes start failing and one INFO
// line when they work again, and the node is not ready in between.

// logWriteError is a log store write that failed: the entries are not in
// this node's log.
type logWriteError struct{ err error }

func (e *logWriteError) Error() string { return "raft log write failed: " + e.err.Error() }
func (e *logWriteError) Unwrap() error { return e.err }

// diskGuard records the failing writes of one store.
type diskGuard struct {
	what string // "raft log", "raft term and vote"
	dir  string
	log  *slog.Logger

	mu      sync.Mutex
	failing bool
	since   time.Time
	reason  string
}

// failed records a failed write; it logs once per episode.
func (g *diskGuard) failed(err error) {
	noSpace := isNoSpace(err)
	reason := fmt.Sprintf("%s writes fail: %v", g.what, err)
	if noSpace {
		reason = fmt.Sprintf("%s writes fail, no space left on device in %s", g.what, g.dir)
	}
	g.mu.Lock()
	first := !g.failing
	if first {
		g.failing, g.since = true, time.Now()
	}
	g.reason = reason
	g.mu.Unlock()
	if first {
		g.log.Error(g.what+" write failed; this node cannot take part in replication until writes succeed again",
			"err", err, "no_space", noSpace, "data_dir", g.dir)
	}
}

// ok records a successful write.
func (g *diskGuard) ok() {
	g.mu.Lock()
	was, since := g.failing, g.since
	g.failing, g.reason = false, ""
	g.mu.Unlock()
	if was {
		g.log.Info(g.what+" writes succeed again", "data_dir", g.dir, "failed_for", time.Since(since).Round(time.Millisecond))
	}
}

// problem is why writes fail, or "".
func (g *diskGuard) problem() string {
	if g == nil {
		return ""
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.reason
}

// guardedLogs is the log store raft writes through.
type guardedLogs struct {
	raft.LogStore
	g *diskGuard
}

func (s guardedLogs) StoreLog(l *raft.Log) error { return s.StoreLogs([]*raft.Log{l}) }

func (s guardedLogs) StoreLogs(logs []*raft.Log) error {
	if err := s.LogStore.StoreLogs(logs); err != nil {
		s.g.failed(err)
		return &logWriteError{err}
	}
	s.g.ok()
	return nil
}

// IsMonotonic passes on the underlying store's answer.
func (s guardedLogs) IsMonotonic() bool {
	m, ok := s.LogStore.(raft.MonotonicLogStore)
	return ok && m.IsMonotonic()
}

// guardedStable is the stable store raft writes through: writes are retried
// until they succeed or the node stops.
type guardedStable struct {
	raft.StableStore
	g    *diskGuard
	stop <-chan struct{}
}

func (s guardedStable) Set(key, val []byte) error {
	return s.retry(func() error { return s.StableStore.Set(key, val) })
}

func (s guardedStable) SetUint64(key []byte, val uint64) error {
	return s.retry(func() error { return s.StableStore.SetUint64(key, val) })
}

func (s guardedStable) retry(write func() error) error {
	wait := 50 * time.Millisecond
	for {
		err := write()
		if err == nil {
			s.g.ok()
			return nil
		}
		s.g.failed(err)
		select {
		case <-s.stop:
			// Only a node that is stopping gives up; see shutdownRaft.
			return err
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
}

// DiskProblem returns why this node's data directory cannot be written
// (state.db, the raft log or the term and vote), or "" when it can.
func (n *Node) DiskProblem() string {
	if r := n.fsm.Degraded(); r != "" {
		return r
	}
	for _, g := range []*diskGuard{n.logGuard, n.stableGuard} {
		if r := g.problem(); r != "" {
			return r
		}
	}
	return ""
}

// degradedPoll is how often the disk duties (watchDisk) check whether
// state.db stopped committing.
const degradedPoll = 100 * time.Millisecond

// applyProblem returns an error wrapping kind when this node applies
// nothing until state.db commits again (fsm/commitfail.go), else nil.
func (n *Node) applyProblem(kind error) error {
	if r := n.fsm.Degraded(); r != "" {
		return fmt.Errorf("%w: this node applies nothing until its state.db commits again (%s)", kind, r)
	}
	return nil
}

// cannotReply refuses a command whose reply this node produces (a
// client's or an operator's request) while the node cannot apply it: the
// answer would wait for the disk. A command nobody waits for here (an
// audit event, a closed connection) goes on to the leader.
func (n *Node) cannotReply(cmd fsm.Command) error {
	if cmd.Req == 0 {
		return nil
	}
	return n.applyProblem(ErrUnavailable)
}

// handOver is the leader's duty (leaderTicks, every degradedPoll): a
// leader whose state.db cannot commit applies nothing, so it hands
// leadership to a voter that can (applyLeader refuses new entries
// meanwhile). A single voter keeps it and refuses writes until the disk
// recovers. last is when it last tried.
func (n *Node) handOver(last *time.Time) {
	reason := n.fsm.Degraded()
	if reason == "" || time.Since(*last) < handOverEvery || !n.hasOtherVoter() {
		return
	}
	*last = time.Now()
	n.log.Warn("state.db cannot commit; handing leadership over", "reason", reason)
	errc := make(chan error, 1)
	go func() { errc <- n.raft.LeadershipTransfer().Error() }()
	var err error
	select {
	case err = <-errc:
	case <-time.After(handOverEvery):
		err = errors.New("no answer from raft")
	case <-n.shutdownCh:
		return
	}
	if err != nil {
		n.log.Warn("leadership transfer failed; trying again", "err", err, "in", handOverEvery)
	}
}

// handOverEvery spaces leadership transfer attempts.
const handOverEvery = 5 * time.Second

// hasOtherVoter reports whether the configuration has a voter besides
// this node.
func (n *Node) hasOtherVoter() bool {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter && string(s.ID) != n.cfg.NodeID {
			return true
		}
	}
	return false
}

// stallGrace is how long state.db may fail to commit before the node
// sends its clients elsewhere: most failures end at the first retry.
var stallGrace = 5 * time.Second

// OnStall registers fn, called on a goroutine of its own when this node
// stalls: its state.db has not committed for stallGrace while another
// voter can serve. A stalled node applies nothing, so it neither answers
// its clients' writes nor delivers to its consumers; the transports close
// their connections so the clients go to another node and the leases of
// their consumers are released. fn runs once per stall.
func (n *Node) OnStall(fn func(reason string)) {
	n.stallMu.Lock()
	n.stallFns = append(n.stallFns, fn)
	n.stallMu.Unlock()
}

// Stalled returns why the node stalled (see OnStall), or "" when it has
// not: new client connections are refused meanwhile.
func (n *Node) Stalled() string {
	if r := n.stalled.Load(); r != nil {
		return *r
	}
	return ""
}

// watchDisk runs every degradedPoll on every node: the leader hands
// over (handOver), and any node reports its stalls to the OnStall
// functions (checkStall).
func (n *Node) watchDisk() {
	defer n.wg.Done()
	var lastHandOver, degradedSince time.Time
	stall := func() { n.checkStall(&degradedSince) }
	n.leaderTicks(degradedPoll, nil, func() { n.handOver(&lastHandOver); stall() }, stall)
}

// checkStall stalls the node once state.db has failed to commit since
// *since for stallGrace, and ends the stall once it commits.
func (n *Node) checkStall(since *time.Time) {
	reason := n.fsm.Degraded()
	switch {
	case reason == "":
		if n.stalled.Swap(nil) != nil {
			n.log.Info("state.db commits again; client connections are accepted again")
		}
		*since = time.Time{}
		return
	case since.IsZero():
		*since = time.Now()
	}
	if n.stalled.Load() != nil || time.Since(*since) < stallGrace || !n.hasOtherVoter() {
		return
	}
	why := fmt.Sprintf("this node applies nothing until its state.db commits again (%s); connect to another node", reason)
	n.stalled.Store(&why)
	n.log.Warn("state.db has not committed for a while; closing client connections so their clients go to another node",
		"for", time.Since(*since).Round(time.Millisecond), "reason", reason)
	n.stallMu.Lock()
	fns := slices.Clone(n.stallFns)
	n.stallMu.Unlock()
	for _, fn := range fns {
		go fn(why)
	}
}

// NotReadyReason says why Ready is false, or "" when it is true.
func (n *Node) NotReadyReason() string {
	if r := n.DiskProblem(); r != "" {
		return r
	}
	if n.Leader() == "" {
		return "no leader known"
	}
	switch applied, commit := n.fsm.AppliedIndex(), n.raft.CommitIndex(); {
	case applied+8 < commit:
		return fmt.Sprintf("catching up: applied %d of %d committed", applied, commit)
	case commit < applied:
		// Raft learns the commit index from the leader's appends (its
		// heartbeats carry none), so after a restart it reads below what
		// state.db had applied until then: how far behind the node is
		// is not known yet.
		return fmt.Sprintf("catching up: applied %d, the commit index not yet known", applied)
	}
	return ""
}

// guardStores wraps the stores raft writes through; see diskGuard.
func (n *Node) guardStores(logs raft.LogStore, stable raft.StableStore) (raft.LogStore, raft.StableStore) {
	n.logGuard = &diskGuard{what: "raft log", dir: n.cfg.DataDir, log: n.log}
	n.stableGuard = &diskGuard{what: "raft term and vote", dir: n.cfg.DataDir, log: n.log}
	return guardedLogs{logs, n.logGuard}, guardedStable{stable, n.stableGuard, n.shutdownCh}
}

// shutdownRaft stops raft. A goroutine of raft that is waiting for a term
// or vote write on a full disk cannot finish; after a while the node stops
// without it rather than hang (the stores are crash-safe).
func (n *Node) shutdownRaft() error {
	done := make(chan error, 1)
	go func() { done <- n.raft.Shutdown().Error() }()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		n.log.Error("raft did not stop within 10s (a write under the data directory is blocked); stopping without it", "data_dir", n.cfg.DataDir)
		return errors.New("raft did not stop")
	}
}

// isNoSpace reports a full disk. raft's log cache keeps only the text of
// the store's error, so the text counts too.
func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || strings.Contains(err.Error(), syscall.ENOSPC.Error())
}
