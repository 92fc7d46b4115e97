package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/queue"
	bolt "go.etcd.io/bbolt"
)

// ErrLevel: a member of the cluster has not announced a level that
// applies the command (fsm.LevelOf): it runs an older version, or has not
// started since the state lost its announcement. Nothing was proposed.
var ErrLevel = errors.New("not every node applies this command yet")

// levelError is ErrLevel with the nodes that hold it back. It is also a
// queue.ErrConflict (an answer of "conflict"), without that error's text.
type levelError struct{ msg string }

func (e *levelError) Error() string { return e.msg }

func (e *levelError) Is(target error) bool { return target == ErrLevel || target == queue.ErrConflict }

// MembersApply returns nil when every member of the configuration has
// announced a command level that applies commands of type t, else an
// error wrapping ErrLevel and queue.ErrConflict that names the others.
func (n *Node) MembersApply(t fsm.MessageType) error {
	need := fsm.LevelOf(t)
	if need == 0 {
		return nil
	}
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	var levels map[string]int
	if err := n.FSM().View(func(tx *bolt.Tx) error { levels = fsm.NodeLevels(tx); return nil }); err != nil {
		return err
	}
	var behind []string
	for _, s := range f.Configuration().Servers {
		if levels[string(s.ID)] < need {
			behind = append(behind, string(s.ID))
		}
	}
	if len(behind) == 0 {
		return nil
	}
	slices.Sort(behind)
	return &levelError{fmt.Sprintf("%v: %s must run a version of command level %d or later (restart it on the new version)",
		ErrLevel, strings.Join(behind, ", "), need)}
}

// levelCheckEvery is how often a node checks that the state holds its
// command level.
var levelCheckEvery = 10 * time.Second

// announceLevel keeps this node's announced command level in the state:
// a snapshot restored from before the announcement, or from an older
// version, loses it, and the node then announces it again (a
// NodeStarted with its own epoch ends nothing).
func (n *Node) announceLevel(every time.Duration) {
	defer n.wg.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-n.shutdownCh:
			return
		case <-t.C:
		}
		var have int
		ok := n.FSM().View(func(tx *bolt.Tx) error { have = fsm.NodeLevels(tx)[n.cfg.NodeID]; return nil }) == nil
		if ok && have != fsm.Level {
			cmd, _ := fsm.NewCommand(fsm.TypeNodeStarted, "", 0, n.startArgs())
			if err := n.submit(cmd, n.cfg.SubmitTimeout); err != nil && !errors.Is(err, ErrShutdown) {
				n.log.Debug("announcing the command level again failed; trying later", "err", err)
			}
		}
	}
}

// startArgs is what this node announces when it starts.
func (n *Node) startArgs() *fsm.NodeStartedArgs {
	return &fsm.NodeStartedArgs{Node: n.cfg.NodeID, Epoch: n.epoch, Level: fsm.Level}
}

// stateDutiesEvery is how often the leader looks at the state for work
// of its own (raiseLevel, recordRestore): a read of two keys.
var stateDutiesEvery = 200 * time.Millisecond

// stateDuties runs the leader's duties that the applied state calls for.
func (n *Node) stateDuties() {
	defer n.wg.Done()
	var waiting string
	n.leaderTicks(stateDutiesEvery, nil, func() {
		n.raiseLevel(&waiting)
		n.recordRestore()
	}, nil)
}

// raiseLevel raises the cluster level to this version's fsm.Level once
// every member announced it (MembersApply of fsm.TypeClusterLevel), so
// that what the newer level changes starts at one entry on every
// replica. waiting is why it last waited, logged once.
func (n *Node) raiseLevel(waiting *string) {
	have, err := n.ClusterLevel()
	if err != nil || have >= fsm.Level {
		return
	}
	if err := n.MembersApply(fsm.TypeClusterLevel); err != nil {
		if why := err.Error(); why != *waiting {
			*waiting = why
			n.log.Info("the cluster level waits until every node runs this version", "cluster_level", have, "level", fsm.Level, "why", why)
		}
		return
	}
	rep, err := n.callSelf(fsm.TypeClusterLevel, "", &fsm.ClusterLevelArgs{Level: fsm.Level})
	switch {
	case errors.Is(err, queue.ErrConflict):
		// Raised already: an earlier proposal's outcome was unknown.
	case err != nil:
		n.log.Debug("raising the cluster level failed; trying again", "err", err)
		return
	default:
		if r, ok := rep.Result.(*fsm.ClusterLevelResult); ok {
			n.log.Info("cluster level raised", "from", r.Was, "to", r.Level)
		}
	}
	*waiting = ""
}

// recordRestore proposes the audit entry of a snapshot restore whose
// leader did not (fsm/restorerec.go): it lost the leadership before.
func (n *Node) recordRestore() {
	var p fsm.RestorePending
	var ok bool
	if n.FSM().View(func(tx *bolt.Tx) error { p, ok = fsm.PendingRestore(tx); return nil }) != nil || !ok {
		return
	}
	_, err := n.callSelf(fsm.TypeRestoreRecord, p.Actor, &p)
	switch {
	case err == nil:
		n.log.Warn("recorded the audit entry of a snapshot restore its leader could not", "restore", p.ID, "subject", p.Subject, "operator", p.Actor)
	case !errors.Is(err, queue.ErrConflict):
		n.log.Debug("recording a snapshot restore failed; trying again", "restore", p.ID, "err", err)
	}
}

// callSelf is Call within the submit timeout, the reply's business error
// returned as the error.
func (n *Node) callSelf(t fsm.MessageType, actor string, body any) (*fsm.Reply, error) {
	ctx, cancel := context.WithTimeout(context.Background(), n.cfg.SubmitTimeout)
	defer cancel()
	rep, err := n.Call(ctx, t, actor, body)
	if err == nil && rep.Err != nil {
		err = rep.Err
	}
	return rep, err
}

// ClusterLevel is the cluster level (fsm.ClusterLevel) of this node's
// applied state.
func (n *Node) ClusterLevel() (level int, err error) {
	err = n.FSM().View(func(tx *bolt.Tx) error { level = fsm.ClusterLevel(tx); return nil })
	return level, err
}
