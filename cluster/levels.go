package cluster

import (
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
