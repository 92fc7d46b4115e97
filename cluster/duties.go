package cluster

import (
	"time"

	"github.com/hashicorp/raft"
)

// leaderTicks runs one of the leader's periodic duties (schedules,
// audit checkpoints, task retention): every interval, lead while this
// node leads, else idle (nil: nothing). Every node runs each duty; only
// the leader of the moment acts, so the duty goes on across a failover.
// It returns when stop is closed or the node shuts down.
func (n *Node) leaderTicks(every time.Duration, stop <-chan struct{}, lead, idle func()) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-n.shutdownCh:
			return
		case <-t.C:
		}
		switch {
		case n.Raft().State() == raft.Shutdown:
			return
		case n.IsLeader():
			lead()
		case idle != nil:
			idle()
		}
	}
}
