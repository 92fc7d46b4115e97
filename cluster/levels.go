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
	return n.membersAt(need)
}

// membersAt returns nil when every member of the configuration has
// announced command level need or later, else the levelError naming the
// others.
func (n *Node) membersAt(need int) error {
	levels, err := n.memberLevels()
	if err != nil {
		return err
	}
	return behindError(levels, need)
}

// behindError is the levelError naming the members of levels below need,
// or nil.
func behindError(levels map[string]int, need int) error {
	var behind []string
	for id, l := range levels {
		if l < need {
			behind = append(behind, id)
		}
	}
	if len(behind) == 0 {
		return nil
	}
	slices.Sort(behind)
	return &levelError{fmt.Sprintf("%v: %s must run a version of command level %d or later (restart it on the new version)",
		ErrLevel, strings.Join(behind, ", "), need)}
}

// memberLevels is the level each member of the configuration announced
// (0: none).
func (n *Node) memberLevels() (map[string]int, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	var announced map[string]int
	if err := n.FSM().View(func(tx *bolt.Tx) error { announced = fsm.NodeLevels(tx); return nil }); err != nil {
		return nil, err
	}
	out := map[string]int{}
	for _, s := range f.Configuration().Servers {
		out[string(s.ID)] = announced[string(s.ID)]
	}
	return out, nil
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
	check := func() {
		var have int
		ok := n.FSM().View(func(tx *bolt.Tx) error { have = fsm.NodeLevels(tx)[n.cfg.NodeID]; return nil }) == nil
		if ok && have != n.level {
			cmd, _ := fsm.NewCommand(fsm.TypeNodeStarted, "", 0, n.startArgs())
			if err := n.submit(cmd, n.cfg.SubmitTimeout); err != nil && !errors.Is(err, ErrShutdown) {
				n.log.Debug("announcing the command level again failed; trying later", "err", err)
			}
		}
	}
	// Every node, leader or not.
	n.leaderTicks(every, nil, check, check)
}

// startArgs is what this node announces when it starts.
func (n *Node) startArgs() *fsm.NodeStartedArgs {
	return &fsm.NodeStartedArgs{Node: n.cfg.NodeID, Epoch: n.epoch, Level: n.level}
}

// announcedLevel is the command level nodes created from now on announce
// (Node.level): fsm.Level (tests of upgrades set a lower one, as an older
// version would).
var announcedLevel = fsm.Level

// stateDutiesEvery is how often the leader looks at the state for work
// of its own (raiseLevel, recordRestore): a read of two keys.
var stateDutiesEvery = 200 * time.Millisecond

// stateDuties runs the leader's duties that the applied state calls for.
func (n *Node) stateDuties() {
	defer n.wg.Done()
	var waiting string
	var seen restoreSeen
	n.leaderTicks(stateDutiesEvery, nil, func() {
		n.raiseLevel(&waiting)
		n.recordRestore(&seen)
	}, nil)
}

// raiseLevel raises the cluster level to the highest command level
// every member of the configuration announced (this version's fsm.Level
// at most), so that what a level changes starts at one entry on every
// replica, and only once every replica applies it. waiting is why it
// last waited, logged once.
func (n *Node) raiseLevel(waiting *string) {
	have, err := n.ClusterLevel()
	if err != nil || have >= fsm.Level {
		return
	}
	levels, err := n.memberLevels()
	if err != nil {
		return
	}
	target := fsm.Level
	for _, l := range levels {
		target = min(target, l)
	}
	if target <= have || target < fsm.LevelOf(fsm.TypeClusterLevel) {
		if why := behindError(levels, fsm.Level); why != nil && why.Error() != *waiting {
			*waiting = why.Error()
			n.log.Info("the cluster level waits until every node runs this version", "cluster_level", have, "level", fsm.Level, "why", *waiting)
		}
		return
	}
	rep, err := n.callSelf(fsm.TypeClusterLevel, "", &fsm.ClusterLevelArgs{Level: target}, true)
	switch {
	case errors.Is(err, ErrLevel):
		return // the configuration changed meanwhile
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

// restoreGrace is how long a restore's mark waits for the leader that
// restored it to record it, before the duty does (recordRestore).
const restoreGrace = 2 * time.Second

// recordRestore proposes the audit entry of a snapshot restore whose
// leader did not record it (fsm/restorerec.go): it lost the leadership
// first. seen is the mark found last, and since when.
func (n *Node) recordRestore(seen *restoreSeen) {
	var p fsm.RestorePending
	var ok bool
	if n.FSM().View(func(tx *bolt.Tx) error { p, ok = fsm.PendingRestore(tx); return nil }) != nil || !ok {
		return
	}
	if seen.id != p.ID {
		seen.id, seen.since = p.ID, time.Now()
	}
	if time.Since(seen.since) < restoreGrace {
		return
	}
	switch _, err := n.callSelf(fsm.TypeRestoreRecord, p.Actor, &p, false); {
	case err == nil:
		n.log.Warn("recorded the audit entry of a snapshot restore its leader could not", "restore", p.ID, "subject", p.Subject, "operator", p.Actor)
	case !errors.Is(err, queue.ErrConflict):
		n.log.Debug("recording a snapshot restore failed; trying again", "restore", p.ID, "err", err)
	}
}

// restoreSeen is a restore mark the leader found, and since when.
type restoreSeen struct {
	id    string
	since time.Time
}

// RecordRestore proposes the audit entry of a snapshot restore this
// leader just made (fsm.TypeRestoreRecord). The members' levels are not
// checked against the restored state, which may predate their
// announcements: the restoring leader checked them before it marked the
// file.
func (n *Node) RecordRestore(ctx context.Context, p *fsm.RestorePending) (*fsm.Reply, error) {
	return n.call(ctx, fsm.TypeRestoreRecord, p.Actor, p, false)
}

// callSelf is call within the submit timeout, the reply's business
// error returned as the error.
func (n *Node) callSelf(t fsm.MessageType, actor string, body any, checkLevel bool) (*fsm.Reply, error) {
	ctx, cancel := context.WithTimeout(context.Background(), n.cfg.SubmitTimeout)
	defer cancel()
	rep, err := n.call(ctx, t, actor, body, checkLevel)
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
