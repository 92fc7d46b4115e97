package transport

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/mcpd/mcpd/auth"
	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/route"
	"github.com/mcpd/mcpd/schedule"
	bolt "go.etcd.io/bbolt"
)

// The schedules of the admin API (docs/delegation.md, "Battle rhythm"):
//
//	GET    /v1/schedules                   every schedule, with its next tick
//	POST   /v1/schedules                   add one
//	POST   /v1/schedules/{name}/pause      stop firing it
//	POST   /v1/schedules/{name}/resume     fire again, from the next tick on
//	DELETE /v1/schedules/{name}            delete it and its history
//	GET    /v1/schedules/{name}/history    its firings (?limit=N, newest N)

func (a *Admin) scheduleRoutes() {
	a.mux.HandleFunc("GET /v1/schedules", a.listSchedules)
	a.mux.HandleFunc("POST /v1/schedules", a.addSchedule)
	a.mux.HandleFunc("POST /v1/schedules/{name}/pause", a.setSchedule("pause"))
	a.mux.HandleFunc("POST /v1/schedules/{name}/resume", a.setSchedule("resume"))
	a.mux.HandleFunc("DELETE /v1/schedules/{name}", a.setSchedule("delete"))
	a.mux.HandleFunc("GET /v1/schedules/{name}/history", a.scheduleHistory)
}

// ScheduleRequest is the body of POST /v1/schedules: Enqueue or Task.
type ScheduleRequest struct {
	Name    string `json:"name"`
	Cron    string `json:"cron"`
	TZ      string `json:"tz,omitempty"`
	Misfire string `json:"misfire,omitempty"` // skip (default) or once
	Origin  string `json:"origin,omitempty"`  // default "rhythm"
	Enqueue *struct {
		Queue string          `json:"queue"`
		Body  json.RawMessage `json:"body"`
	} `json:"enqueue,omitempty"`
	Task *struct {
		Capability string          `json:"capability"`
		Input      json.RawMessage `json:"input"`
	} `json:"task,omitempty"`
}

// ScheduleView is a schedule with its next tick as this node computes it.
type ScheduleView struct {
	schedule.Schedule
	Next int64 `json:"next_tick,omitempty"`
}

func (a *Admin) listSchedules(w http.ResponseWriter, r *http.Request) {
	out := []ScheduleView{}
	err := a.node.Read(func(tx *bolt.Tx) error {
		return schedule.List(tx, func(s *schedule.Schedule) error {
			v := ScheduleView{Schedule: *s}
			if c, err := schedule.Parse(s.Cron, s.TZ); err == nil && !s.Paused {
				v.Next = c.Next(time.UnixMilli(max(s.Last, a.node.Now()))).UnixMilli()
			}
			out = append(out, v)
			return nil
		})
	})
	if err != nil {
		adminFail(w, err)
		return
	}
	adminJSON(w, http.StatusOK, out)
}

func (a *Admin) addSchedule(w http.ResponseWriter, r *http.Request) {
	var req ScheduleRequest
	if err := decodeBody(r, &req); err != nil {
		adminErr(w, http.StatusBadRequest, "bad_request", "%v", err)
		return
	}
	s := schedule.Schedule{Name: req.Name, Cron: req.Cron, TZ: req.TZ, Misfire: req.Misfire, Origin: req.Origin}
	if s.Misfire == "" {
		s.Misfire = schedule.MisfireSkip
	}
	if s.Origin == "" {
		s.Origin = schedule.DefaultOrigin
	}
	switch {
	case (req.Enqueue == nil) == (req.Task == nil):
		adminErr(w, http.StatusBadRequest, "bad_request", "a schedule either enqueues (enqueue: {queue, body}) or submits a task (task: {capability, input})")
		return
	case req.Enqueue != nil:
		if !auth.ValidQueueName(req.Enqueue.Queue) || auth.IsInbox(req.Enqueue.Queue) {
			adminErr(w, http.StatusBadRequest, "bad_request", "enqueue.queue must be a queue name")
			return
		}
		s.Action = schedule.Action{Queue: req.Enqueue.Queue, Body: req.Enqueue.Body}
	default:
		if !route.ValidCapName(req.Task.Capability) {
			adminErr(w, http.StatusBadRequest, "bad_request", "task.capability must be a capability name")
			return
		}
		s.Action = schedule.Action{Capability: req.Task.Capability, Input: req.Task.Input}
	}
	for _, body := range []json.RawMessage{s.Action.Body, s.Action.Input} {
		if len(body) > 0 && !json.Valid(body) {
			adminErr(w, http.StatusBadRequest, "bad_request", "the body or input must be JSON")
			return
		}
	}
	if !auth.ValidAgentName(s.Origin) {
		adminErr(w, http.StatusBadRequest, "bad_request", "origin must be an agent name")
		return
	}
	if _, err := schedule.Parse(s.Cron, s.TZ); err != nil {
		adminErr(w, http.StatusBadRequest, "bad_request", "%v", err)
		return
	}
	if err := s.Check(); err != nil {
		adminErr(w, http.StatusBadRequest, "bad_request", "%v", err)
		return
	}
	rep, ok := a.propose(w, r, fsm.TypeScheduleAdd, &fsm.ScheduleAddArgs{Schedule: s})
	if !ok {
		return
	}
	a.log.Info("schedule added", "schedule", s.Name, "cron", s.Cron, "tz", s.TZ, "operator", Operator(r))
	a.answerSchedule(w, rep, http.StatusCreated)
}

// answerSchedule answers with the schedule a command stored, from its
// result: this node may not have applied the command yet.
func (a *Admin) answerSchedule(w http.ResponseWriter, rep *fsm.Reply, status int) {
	res, ok := rep.Result.(*fsm.ScheduleResult)
	if !ok {
		adminErr(w, http.StatusInternalServerError, "internal", "the command answered no schedule")
		return
	}
	adminJSON(w, status, res.Schedule)
}

func (a *Admin) setSchedule(what string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		rep, ok := a.propose(w, r, fsm.TypeScheduleSet, &fsm.ScheduleSetArgs{Name: name, What: what})
		if !ok {
			return
		}
		a.log.Info("schedule changed", "schedule", name, "op", what, "operator", Operator(r))
		if what == "delete" {
			adminJSON(w, http.StatusOK, map[string]string{"deleted": name})
			return
		}
		a.answerSchedule(w, rep, http.StatusOK)
	}
}

func (a *Admin) scheduleHistory(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	limit := 0
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			adminErr(w, http.StatusBadRequest, "bad_request", "limit must be a count")
			return
		}
		limit = n
	}
	var (
		s *schedule.Schedule
		h []schedule.Firing
	)
	if err := a.node.Read(func(tx *bolt.Tx) error {
		var err error
		if s, err = schedule.Load(tx, name); err != nil || s == nil {
			return err
		}
		h, err = schedule.History(tx, name, limit)
		return err
	}); err != nil {
		adminFail(w, err)
		return
	}
	if s == nil {
		adminErr(w, http.StatusNotFound, "not_found", "no schedule %q", name)
		return
	}
	if h == nil {
		h = []schedule.Firing{}
	}
	adminJSON(w, http.StatusOK, h)
}
