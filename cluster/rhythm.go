package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/mcpd/mcpd/auth"
	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/schedule"
	bolt "go.etcd.io/bbolt"
)

// DefaultMisfireGrace is how late a tick may fire as itself when
// RunSchedules is given no grace: older ticks follow the schedule's
// misfire policy.
const DefaultMisfireGrace = 5 * time.Second

// RunSchedules fires the recurring schedules while this node leads:
// every tick due, as a command stamped with the tick
// (fsm.TypeScheduleFire), in order. Every node runs it; only the leader of
// the moment proposes, and the state machine applies each tick once, so a
// tick two leaders both propose around a failover fires once. It blocks
// until stop is closed or the node shuts down.
func (n *Node) RunSchedules(grace time.Duration, stop <-chan struct{}) {
	if grace <= 0 {
		grace = DefaultMisfireGrace
	}
	n.leaderTicks(100*time.Millisecond, stop, func() { n.fireDue(grace.Milliseconds()) }, nil)
}

// fireDue proposes the ticks due now of every running schedule.
func (n *Node) fireDue(graceMs int64) {
	var list []*schedule.Schedule
	if err := n.FSM().View(func(tx *bolt.Tx) error {
		return schedule.List(tx, func(s *schedule.Schedule) error {
			if !s.Paused {
				list = append(list, s)
			}
			return nil
		})
	}); err != nil {
		return
	}
	now := n.Now()
	for _, s := range list {
		plans, err := schedule.Due(s, now, graceMs)
		if err != nil {
			n.log.Warn("schedule not fired: its expression does not parse here", "schedule", s.Name, "err", err)
			continue
		}
		for _, p := range plans {
			cmd, err := FireCommand(s, p)
			if err == nil {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				err = n.Submit(ctx, cmd)
				cancel()
			}
			if err != nil {
				if !errors.Is(err, ErrShutdown) {
					n.log.Debug("schedule firing not committed; trying again", "schedule", s.Name, "tick", p.Tick, "err", err)
				}
				return
			}
		}
	}
}

// FireCommand is the command firing one planned tick of a schedule: its
// message or task input wrapped in an envelope from the schedule's origin
// with id "sched-NAME-TICK" and the tick as its time.
func FireCommand(s *schedule.Schedule, p schedule.Planned) (fsm.Command, error) {
	a := &fsm.ScheduleFireArgs{Name: s.Name, Tick: p.Tick, Skip: p.Skip, Missed: p.Missed}
	if !p.Skip {
		body := s.Action.Body
		if s.Action.Capability != "" {
			body = s.Action.Input
		}
		if len(body) == 0 {
			body = json.RawMessage("null")
		}
		env, err := json.Marshal(map[string]any{"id": "sched-" + s.Name + "-" + itoa(p.Tick), "from": s.Origin, "ts": p.Tick, "body": body})
		if err != nil {
			return fsm.Command{}, err
		}
		e, err := auth.ParseEnvelope(env)
		if err != nil {
			return fsm.Command{}, err
		}
		a.From, a.ID, a.Hash, a.Env = e.From, e.ID, e.Hash, env
	}
	return fsm.NewCommand(fsm.TypeScheduleFire, "", 0, a)
}

func itoa(n int64) string {
	b, _ := json.Marshal(n)
	return string(b)
}
