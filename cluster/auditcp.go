package cluster

import (
	"context"
	"crypto/ed25519"
	"errors"
	"time"

	"github.com/mcpd/mcpd/audit"
	"github.com/mcpd/mcpd/fsm"
	bolt "go.etcd.io/bbolt"
)

// DefaultAuditCheckpointEvery is how often the leader signs the audit
// chain's head when RunAuditCheckpoints is given no interval.
const DefaultAuditCheckpointEvery = time.Minute

// RunAuditCheckpoints signs the head of the audit chain with the cluster
// audit key (auth.ClusterKey.AuditKey) every interval while this node
// leads, and proposes it as a checkpoint (fsm.TypeAuditCheckpoint), unless
// nothing but the previous checkpoint was recorded since. Every node runs
// it with the same key; only the leader of the moment proposes, so the
// checkpoints continue across a failover. It blocks until stop is closed
// or the node shuts down. every <= 0 means DefaultAuditCheckpointEvery.
func (n *Node) RunAuditCheckpoints(key ed25519.PrivateKey, every time.Duration, stop <-chan struct{}) {
	if every <= 0 {
		every = DefaultAuditCheckpointEvery
	}
	n.leaderTicks(every, stop, func() {
		head, err := n.proposeAuditCheckpoint(key, every)
		switch {
		case errors.Is(err, ErrShutdown):
		case err != nil:
			n.log.Warn("audit checkpoint not proposed; trying again at the next interval", "seq", head.Seq, "err", err)
		case head.Seq > 0:
			n.log.Debug("audit checkpoint committed", "seq", head.Seq)
		}
	}, nil)
}

// proposeAuditCheckpoint proposes a checkpoint of the head this node has
// applied, if it leads and the head moved. It returns the head it
// proposed (zero if none). The FSM checks the signature and that the
// entry at that seq has that hash on every replica; a checkpoint that
// loses a race with another (a new leader's) is refused as stale there,
// which is harmless.
func (n *Node) proposeAuditCheckpoint(key ed25519.PrivateKey, timeout time.Duration) (audit.Head, error) {
	if !n.IsLeader() {
		return audit.Head{}, nil
	}
	var (
		head audit.Head
		due  bool
	)
	err := n.FSM().View(func(tx *bolt.Tx) error {
		var err error
		head, due, err = audit.CheckpointDue(tx)
		return err
	})
	if err != nil || !due {
		return audit.Head{}, err
	}
	cmd, err := fsm.NewAuditCheckpoint(audit.Sign(key, head))
	if err != nil {
		return head, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return head, n.Submit(ctx, cmd)
}
