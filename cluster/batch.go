package cluster

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/hashicorp/raft"
	"github.com/mcpd/mcpd/fsm"
)

// Group commit: client commands wait in submitCh; the batch loop takes all
// that are waiting (up to maxBatchCmds / maxBatchBytes) into one Raft log
// entry, with up to maxInflight entries on their way at once. Under load
// the batches grow, so one fsync on a quorum serves many requests.

type pending struct {
	cmd      fsm.Command
	seq      uint64 // submission order, kept through retries
	deadline time.Time
	done     func(error) // called once with the outcome
	last     error       // why its latest attempt was not applied
}

// Submit proposes a command and waits for its outcome: nil once it is
// committed by a quorum (the reply to the client, if any, is produced when
// this node applies it), ErrUnavailable when it was not applied (no leader
// within the submit timeout), ErrUnknown when it may have been, or
// ErrShutdown.
func (n *Node) Submit(ctx context.Context, cmd fsm.Command) error {
	if err := n.refuseSubmit(cmd); err != nil {
		return err
	}
	timeout := n.cfg.SubmitTimeout
	if d, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(d))
	}
	return n.submit(cmd, timeout)
}

func (n *Node) submit(cmd fsm.Command, timeout time.Duration) error {
	ch := make(chan error, 1)
	n.submitAsync(cmd, timeout, func(err error) { ch <- err })
	return <-ch
}

// SubmitAsync queues a command and returns; done is called once with the
// outcome (see Submit). Commands queued by one goroutine reach the log in
// the order they were queued, unless one has to be retried. It blocks
// while the submit queue is full.
func (n *Node) SubmitAsync(cmd fsm.Command, done func(error)) {
	if err := n.refuseSubmit(cmd); err != nil {
		done(err)
		return
	}
	n.submitAsync(cmd, n.cfg.SubmitTimeout, done)
}

// refuseSubmit is why a client's command is refused before it is
// queued: the node is rebuilding its data, or cannot apply (cannotReply).
func (n *Node) refuseSubmit(cmd fsm.Command) error {
	if n.rejoining.Load() {
		return errRejoining
	}
	return n.cannotReply(cmd)
}

func (n *Node) submitAsync(cmd fsm.Command, timeout time.Duration, done func(error)) {
	p := &pending{cmd: cmd, seq: n.subSeq.Add(1), deadline: time.Now().Add(timeout), done: done}
	n.subMu.RLock()
	defer n.subMu.RUnlock()
	if n.subClosed {
		done(ErrShutdown)
		return
	}
	select {
	case n.submitCh <- p:
	case <-n.shutdownCh:
		done(ErrShutdown)
	}
}

func (n *Node) batchLoop() {
	defer n.wg.Done()
	defer n.closeRetries()
	for {
		// Commands that were not applied go again before anything newer.
		if n.hasRetries() {
			if !n.proposeRetries() {
				return
			}
			continue
		}
		var first *pending
		select {
		case first = <-n.submitCh:
		case <-n.retryWake:
			continue
		case <-n.shutdownCh:
			n.drainSubmits()
			return
		}
		select {
		case n.inflight <- struct{}{}:
		case <-n.shutdownCh:
			first.done(ErrShutdown)
			n.drainSubmits()
			return
		}
		batch := []*pending{first}
		size := len(first.cmd.Body)
	collect:
		for len(batch) < maxBatchCmds && size < maxBatchBytes {
			select {
			case p := <-n.submitCh:
				batch = append(batch, p)
				size += len(p.cmd.Body)
			default:
				break collect
			}
		}
		n.propose(batch)
	}
}

// closeRetries fails every command waiting for a retry, and every later
// one, when the batch loop stops.
func (n *Node) closeRetries() {
	n.retryMu.Lock()
	retry := n.retry
	n.retry, n.retryClosed = nil, true
	n.retryMu.Unlock()
	for _, p := range retry {
		p.done(ErrShutdown)
	}
	n.drainSubmits()
}

func (n *Node) hasRetries() bool {
	n.retryMu.Lock()
	defer n.retryMu.Unlock()
	return len(n.retry) > 0
}

// proposeRetries waits until no batch is on its way (so every failure of
// the last round is back in the retry list), backs off, and proposes the
// retries in their original submission order. It returns false when the
// node stops.
func (n *Node) proposeRetries() bool {
	if !n.waitInflight(0) {
		return false
	}
	select {
	case <-time.After(50 * time.Millisecond):
	case <-n.shutdownCh:
		return false
	}
	n.retryMu.Lock()
	retry := n.retry
	n.retry = nil
	n.retryMu.Unlock()
	sort.Slice(retry, func(i, j int) bool { return retry[i].seq < retry[j].seq })
	now := time.Now()
	live := retry[:0]
	for _, p := range retry {
		switch err := n.cannotReply(p.cmd); {
		case now.After(p.deadline):
			p.done(fmt.Errorf("%w: no leader accepted the command in time (last: %v)", ErrUnavailable, p.last))
		case err != nil:
			// Its reply would wait for this node's disk: say so now.
			p.done(err)
		default:
			live = append(live, p)
		}
	}
	for len(live) > 0 {
		k := min(len(live), maxBatchCmds)
		n.inflight <- struct{}{}
		n.propose(live[:k])
		live = live[k:]
	}
	return true
}

// waitInflight waits until at most keep batches are on their way.
func (n *Node) waitInflight(keep int) bool {
	for len(n.inflight) > keep {
		select {
		case <-time.After(time.Millisecond):
		case <-n.shutdownCh:
			return false
		}
	}
	return true
}

func (n *Node) drainSubmits() {
	for {
		select {
		case p := <-n.submitCh:
			p.done(ErrShutdown)
		default:
			return
		}
	}
}

// propose sends one batch to Raft on the leader, or to the leader from a
// follower. It returns once the batch is on its way, so batches reach the
// log in the order they were formed.
func (n *Node) propose(batch []*pending) {
	cmds := make([]fsm.Command, len(batch))
	for i, p := range batch {
		cmds[i] = p.cmd
	}
	// Batches still on their way to another target may yet fail and be
	// retried; they must not be overtaken. The caller holds one slot.
	target := "local"
	if !n.IsLeader() {
		_, id := n.raft.LeaderWithID()
		target = string(id)
	}
	if target != n.lastTarget {
		n.lastTarget = target
		if len(n.inflight) > 1 {
			// Batches forwarded to a former leader end now (outcome
			// unknown) rather than when TCP gives up on it.
			keep := ""
			if addr, _ := n.raft.LeaderWithID(); target != "local" {
				keep = string(addr)
			}
			n.fwd.dropUnless(keep)
			n.waitInflight(1)
			if n.hasRetries() {
				// Go behind the retries, in submission order.
				<-n.inflight
				n.requeue(batch, fmt.Errorf("%w: the leader changed", ErrUnavailable))
				return
			}
		}
	}
	done := make(chan error, 1)
	switch addr, id := n.raft.LeaderWithID(); {
	case n.IsLeader():
		wait, err := n.applyLeader(cmds)
		if err != nil {
			done <- err
			break
		}
		go func() {
			_, err := wait()
			done <- err
		}()
	case id != "":
		done = n.fwd.send(string(addr), cmds)
	default:
		done <- fmt.Errorf("%w: no leader", ErrUnavailable)
	}
	// A batch that failed on the spot goes on the retry list before the
	// loop forms the next one, so nothing newer overtakes it.
	select {
	case err := <-done:
		n.finish(batch, err)
		<-n.inflight
		return
	default:
	}
	go func() {
		err := <-done
		n.finish(batch, err)
		<-n.inflight
	}()
}

// finish reports a batch's outcome; commands that were certainly not
// applied are retried, in order, until their deadline.
func (n *Node) finish(batch []*pending, err error) {
	if !errors.Is(err, ErrUnavailable) {
		for _, p := range batch {
			p.done(err)
		}
		return
	}
	n.requeue(batch, err)
}

// requeue puts commands that were not applied (why: err) on the retry
// list and wakes the batch loop; once the loop has stopped they fail at
// once.
func (n *Node) requeue(batch []*pending, err error) {
	n.retryMu.Lock()
	if n.retryClosed {
		n.retryMu.Unlock()
		for _, p := range batch {
			p.done(ErrShutdown)
		}
		return
	}
	for _, p := range batch {
		p.last = err
	}
	n.retry = append(n.retry, batch...)
	n.retryMu.Unlock()
	select {
	case n.retryWake <- struct{}{}:
	default:
	}
}

// applyLeader appends an entry with the given commands to the log, stamped
// with the leader's clock (never earlier than an earlier stamp). The
// returned function waits until the entry is applied here and returns the
// replies of its commands.
func (n *Node) applyLeader(cmds []fsm.Command) (func() ([]*fsm.Reply, error), error) {
	if !n.IsLeader() {
		return nil, fmt.Errorf("%w: not the leader", ErrUnavailable)
	}
	// A leader that cannot apply would commit entries nobody here
	// answers; it hands leadership over instead (handOver).
	if err := n.applyProblem(ErrUnavailable); err != nil {
		return nil, err
	}
	now, measured := n.stampTime()
	if !measured {
		return nil, fmt.Errorf("%w: the leader has not yet measured a quorum's clocks", ErrUnavailable)
	}
	for {
		last := n.lastTime.Load()
		if now < last {
			now = last
		}
		if n.lastTime.CompareAndSwap(last, now) {
			break
		}
	}
	data, err := fsm.EncodeEntry(&fsm.Entry{Time: now, Cmds: cmds})
	if err != nil {
		return nil, err
	}
	f := n.raft.Apply(data, 10*time.Second)
	return func() ([]*fsm.Reply, error) {
		if err := n.awaitApplied(f); err != nil {
			switch {
			case errors.Is(err, ErrShutdown):
				return nil, fmt.Errorf("%w: node shutting down", ErrUnknown)
			case errors.Is(err, ErrUnknown):
				return nil, err
			}
			return nil, mapRaftError(err)
		}
		replies, _ := f.Response().([]*fsm.Reply)
		return replies, nil
	}, nil
}

// await waits for a Raft future, or for the node to stop (ErrShutdown):
// with BatchApplyCh, Raft never answers a future still queued in its apply
// channel when it shuts down, and a wait on it would never end.
func (n *Node) await(f raft.Future) error {
	errc := make(chan error, 1)
	go func() { errc <- f.Error() }()
	select {
	case err := <-errc:
		return err
	case <-n.shutdownCh:
		return ErrShutdown
	}
}

// awaitApplied is await for an entry this leader proposed. The future
// ends once the entry is applied here, which waits while state.db cannot
// commit (fsm/commitfail.go); the entry then ends with ErrUnknown rather
// than keep its client waiting for the disk.
func (n *Node) awaitApplied(f raft.Future) error {
	errc := make(chan error, 1)
	go func() { errc <- f.Error() }()
	for {
		failed := n.fsm.CommitFailed()
		if err := n.applyProblem(ErrUnknown); err != nil {
			return err
		}
		select {
		case err := <-errc:
			return err
		case <-n.shutdownCh:
			return ErrShutdown
		case <-failed:
		}
	}
}

func mapRaftError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipTransferInProgress), errors.Is(err, raft.ErrEnqueueTimeout),
		errors.As(err, new(*logWriteError)): // the leader could not store it: not replicated
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	default: // leadership lost, shutdown, timeout: it may have committed
		return fmt.Errorf("%w: %v", ErrUnknown, err)
	}
}
