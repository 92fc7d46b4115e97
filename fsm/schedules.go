package fsm

import (
	"fmt"
	"strconv"

	"github.com/mcpd/mcpd/queue"
	"github.com/mcpd/mcpd/schedule"
	"github.com/mcpd/mcpd/task"
)

// Schedule commands (docs/delegation.md, "Battle rhythm").
const (
	TypeScheduleAdd  MessageType = 27 // an operator adds a schedule
	TypeScheduleSet  MessageType = 28 // an operator pauses, resumes or deletes one
	TypeScheduleFire MessageType = 29 // the leader fires (or skips) a tick
)

// ScheduleAddArgs adds a schedule.
type ScheduleAddArgs struct {
	Schedule schedule.Schedule `msgpack:"s"`
}

// ScheduleSetArgs pauses, resumes or deletes a schedule.
type ScheduleSetArgs struct {
	Name string `msgpack:"n"`
	What string `msgpack:"w"` // pause, resume, delete
}

// ScheduleFireArgs fires a schedule's tick: the leader computed it from
// the cron expression and made the envelope of the message or task it
// carries (id "sched-NAME-TICK", so the firing is also deduplicated).
// Skip records late ticks skipped by the misfire policy instead.
type ScheduleFireArgs struct {
	Name   string   `msgpack:"n"`
	Tick   int64    `msgpack:"t"`
	Skip   bool     `msgpack:"s,omitempty"`
	Missed int      `msgpack:"m,omitempty"`
	From   string   `msgpack:"f,omitempty"`
	ID     string   `msgpack:"i,omitempty"`
	Hash   [32]byte `msgpack:"h,omitempty"`
	Env    []byte   `msgpack:"e,omitempty"`
}

// ScheduleResult answers an add, pause or resume with the schedule as
// stored (a follower's admin API answers with it before it applied the
// command itself).
type ScheduleResult struct {
	Schedule schedule.Schedule `msgpack:"s"`
}

// FireResult answers a firing: what it did.
type FireResult struct {
	Firing schedule.Firing `msgpack:"f"`
}

// schedErr turns the errors of package schedule into business errors.
func schedErr(err error) error {
	return asBusiness(err, schedule.ErrNotFound, queue.ErrNotFound, schedule.ErrConflict, queue.ErrConflict,
		schedule.ErrBadRequest, queue.ErrBadRequest)
}

func init() {
	register(TypeScheduleAdd, func(a *ScheduleAddArgs) error {
		return firstErr(schedErr(a.Schedule.Check()), checkAgentName("origin", a.Schedule.Origin))
	}, func(t *Tx, a *ScheduleAddArgs) (any, error) {
		s := a.Schedule
		s.By = t.Actor()
		if err := schedErr(schedule.Add(t.Bolt(), t.Now(), s)); err != nil {
			return nil, err
		}
		return scheduleResult(t, s.Name)
	})
	register(TypeScheduleSet, func(a *ScheduleSetArgs) error {
		if a.Name == "" || (a.What != "pause" && a.What != "resume" && a.What != "delete") {
			return badArg("schedule", "names a schedule and pause, resume or delete")
		}
		return nil
	}, func(t *Tx, a *ScheduleSetArgs) (any, error) {
		if err := schedErr(schedule.Set(t.Bolt(), t.Now(), a.Name, a.What)); err != nil || a.What == "delete" {
			return nil, err
		}
		return scheduleResult(t, a.Name)
	})
	register(TypeScheduleFire, func(a *ScheduleFireArgs) error {
		if a.Name == "" || a.Tick <= 0 || a.Missed < 0 {
			return badArg("firing", "names a schedule and a tick")
		}
		if !a.Skip {
			return checkSender(a.From, a.ID, a.Env)
		}
		return nil
	}, func(t *Tx, a *ScheduleFireArgs) (any, error) {
		s, err := schedule.Claim(t.Bolt(), a.Name, a.Tick)
		if err != nil {
			return nil, schedErr(err)
		}
		f := schedule.Firing{Tick: a.Tick, At: t.Now(), Skip: a.Skip, Missed: a.Missed}
		if !a.Skip {
			if s.Action.Queue != "" {
				res, err := t.Enqueue(queue.EnqueueArgs{Queue: s.Action.Queue, From: a.From, ID: a.ID, Hash: a.Hash, Env: a.Env})
				switch {
				case err == nil:
					f.Result = s.Action.Queue + "/" + strconv.FormatUint(res.Seq, 10)
				case isBusiness(err):
					f.Error = err.Error()
				default:
					return nil, err
				}
			} else {
				res, err := t.Tasks.Submit(task.SubmitArgs{From: a.From, Intent: "schedule " + s.Name,
					Tasks: []task.Spec{{Ref: s.Name, Capability: s.Action.Capability, Input: a.Env}}, Limits: task.DefaultLimits})
				switch {
				case err == nil:
					f.Result = res.Root
				case isBusiness(taskErr(err)):
					f.Error = err.Error()
				default:
					return nil, err
				}
			}
		}
		if err := schedule.Record(t.Bolt(), s, f); err != nil {
			return nil, err
		}
		return &FireResult{Firing: f}, nil
	})
}

func scheduleResult(t *Tx, name string) (any, error) {
	s, err := schedule.Load(t.Bolt(), name)
	if err != nil || s == nil {
		return nil, fmt.Errorf("schedule %q just stored: %v", name, err)
	}
	return &ScheduleResult{Schedule: *s}, nil
}
