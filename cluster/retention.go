package cluster

import (
	"context"
	"errors"
	"time"

	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/task"
	bolt "go.etcd.io/bbolt"
)

// DefaultTaskRetention is how long a tree of tasks that has ended is kept
// when RunTaskRetention is given no retention.
const DefaultTaskRetention = 7 * 24 * time.Hour

// Retention's pace: a look every retentionEvery, reading at most
// retentionBatch tasks each time, so that a large store is read in
// slices rather than in one long pass on the leader.
const (
	retentionEvery = 10 * time.Second
	retentionBatch = 5000
)

// RunTaskRetention removes the trees of tasks (a root graph and all that
// was delegated under it) whose tasks have all ended, the last change
// retention or longer ago, while this node leads. It reads the store in
// slices of about retentionBatch tasks, one slice every every (10 s when
// every is 0), and proposes the trees it finds as one
// fsm.TypeTaskPrune; every replica checks them again at the command's
// time, so a tree that changed meanwhile stays. It blocks until stop is
// closed or the node shuts down.
func (n *Node) RunTaskRetention(retention, every time.Duration, stop <-chan struct{}) {
	if retention <= 0 {
		retention = DefaultTaskRetention
	}
	if every <= 0 {
		every = retentionEvery
	}
	cursor, waiting := "", ""
	n.leaderTicks(every, stop, func() {
		// During a rolling upgrade, nodes of a version without it would
		// stop at the command: retention waits for them.
		if err := n.MembersApply(fsm.TypeTaskPrune); err != nil {
			if err.Error() != waiting {
				n.log.Info("task retention waits until every node can apply it", "why", err)
				waiting = err.Error()
			}
			return
		}
		waiting = ""
		next, err := n.pruneSlice(retention, cursor)
		if err != nil {
			if !errors.Is(err, ErrShutdown) {
				n.log.Warn("task retention: a slice failed; it is read again", "after", cursor, "err", err)
			}
			return
		}
		cursor = next
	}, func() { cursor = "" })
}

// pruneSlice reads one slice of the store from the graph after cursor and
// proposes the trees past the retention; it returns where the next slice
// starts ("" at the end of the store).
func (n *Node) pruneSlice(retention time.Duration, cursor string) (string, error) {
	before := n.Now() - retention.Milliseconds()
	var roots []string
	var next string
	if err := n.FSM().View(func(tx *bolt.Tx) (err error) {
		roots, next, err = task.PruneCandidates(tx, before, cursor, retentionBatch)
		return err
	}); err != nil {
		return cursor, err
	}
	if len(roots) == 0 {
		return next, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rep, err := n.Call(ctx, fsm.TypeTaskPrune, "", &fsm.TaskPruneArgs{Roots: roots, RetentionMs: retention.Milliseconds()})
	if err == nil && rep.Err != nil {
		err = rep.Err
	}
	if err != nil {
		return cursor, err
	}
	if r, ok := rep.Result.(*task.PruneResult); ok && r.Graphs > 0 {
		n.log.Info("task retention: ended task trees removed", "trees", r.Graphs, "tasks", r.Tasks, "retention", retention)
	}
	return next, nil
}
