package transport

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"

	"github.com/mcpd/mcpd/auth"
	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/queue"
	bolt "go.etcd.io/bbolt"
)

// The queues of the admin API. Reads come from the node's applied state:
//
//	GET /v1/queues                       every queue with its counts
//	GET /v1/queues/{name}/messages       its messages, oldest first (?limit=N, default 50, at most 1000):
//	                                     state, attempts, lease, dead-letter origin and reason, the
//	                                     timeline (enqueue, deliveries, settles, lapses, dead-lettering,
//	                                     redrives), the envelope
//
// Changes are commands through Raft (fsm/queue_admin.go), audited with
// the operator as their actor:
//
//	POST   /v1/queues/{name}/redrive         move dead letters of the queue {name} back to the queues they
//	                                         died in, or to "to": {"seqs":[...]} exactly those (at most 1000,
//	                                         all or none), else every dead letter, at most "limit"
//	DELETE /v1/queues/{name}/messages/{seq}  delete one message; a leased one only with ?force=true

func (a *Admin) queueRoutes() {
	a.mux.HandleFunc("GET /v1/queues", a.listQueues)
	a.mux.HandleFunc("GET /v1/queues/{name}/messages", a.peekQueue)
	a.mux.HandleFunc("POST /v1/queues/{name}/redrive", a.redriveQueue)
	a.mux.HandleFunc("DELETE /v1/queues/{name}/messages/{seq}", a.deleteMessage)
}

// AdminQueue is a queue as GET /v1/queues lists it.
type AdminQueue struct {
	Name      string `json:"name"`
	Ready     int64  `json:"ready"`
	Inflight  int64  `json:"inflight"`
	Delayed   int64  `json:"delayed"`
	Dead      int64  `json:"dead_lettered"` // moved to its dead-letter queue since it was created
	Consumers int64  `json:"consumers"`
	Enqueued  uint64 `json:"enqueued"` // messages it was given since it was created
}

// AdminMessage is a stored message as GET /v1/queues/{name}/messages
// shows it.
type AdminMessage struct {
	Seq        uint64          `json:"seq"`
	State      string          `json:"state"`
	Attempts   int             `json:"attempts"`
	Enqueued   int64           `json:"enqueued"`
	Holder     string          `json:"holder,omitempty"` // the lease's connection or Redis consumer
	LeasedAt   int64           `json:"leased_at,omitempty"`
	LeaseUntil int64           `json:"lease_until,omitempty"`
	Dead       *queue.DeadInfo `json:"dead,omitempty"`
	// Timeline is what happened to the message, oldest first; a dead
	// letter's begins with the message it was. At most queue.MaxTimeline
	// events: the first and the latest, TimelineDropped left out between.
	Timeline        []AdminEvent    `json:"timeline"`
	TimelineDropped int             `json:"timeline_dropped,omitempty"`
	Envelope        json.RawMessage `json:"envelope"`
}

// AdminEvent is one event of a message's timeline. Event is enqueued,
// delivered, nacked, rejected, expired (the lease lapsed), released (the
// holder's connection ended: detail says how), dead (detail: the reason)
// or redriven (who: the operator; detail: "from DLQ/SEQ"). Attempt is the
// delivery the event concerns (0 before the first, and again after a
// redrive); Who is the sender of an enqueue, the connection or "redis:"
// consumer of a delivery and its settles, the operator of a redrive;
// Consumer the consumer id a delivery went to (none for a Redis pull).
type AdminEvent struct {
	AtMs     int64  `json:"at_ms"`
	Event    string `json:"event"`
	Attempt  int    `json:"attempt"`
	Who      string `json:"who,omitempty"`
	Consumer uint64 `json:"consumer,omitempty"`
	Detail   string `json:"detail,omitempty"`
}

// adminTimeline is a message's timeline as the admin API shows it.
func adminTimeline(events []queue.TimelineEvent) []AdminEvent {
	out := make([]AdminEvent, len(events))
	for i, e := range events {
		out[i] = AdminEvent{AtMs: e.At, Event: e.Kind.String(), Attempt: e.Attempt, Who: e.Who, Consumer: e.Consumer, Detail: e.Detail}
	}
	return out
}

var stateNames = map[uint8]string{queue.StateReady: "ready", queue.StateDelayed: "delayed", queue.StateInflight: "inflight"}

func (a *Admin) listQueues(w http.ResponseWriter, r *http.Request) {
	out := []AdminQueue{}
	err := a.node.Read(func(tx *bolt.Tx) error {
		return queue.EachStats(tx, func(name string, s queue.Stats) error {
			out = append(out, AdminQueue{Name: name, Ready: s.Ready, Inflight: s.Inflight, Delayed: s.Delayed,
				Dead: s.Info.Dead, Consumers: s.Consumers, Enqueued: s.Enqueued})
			return nil
		})
	})
	if err != nil {
		adminFail(w, err)
		return
	}
	adminJSON(w, http.StatusOK, out)
}

func (a *Admin) peekQueue(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if !auth.ValidQueueName(name) {
		adminErr(w, http.StatusBadRequest, "bad_request", "%q is not a queue name", name)
		return
	}
	limit := 50
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			adminErr(w, http.StatusBadRequest, "bad_request", "limit must be between 1 and 1000")
			return
		}
		limit = n
	}
	var (
		out    = []AdminMessage{}
		exists bool
	)
	err := a.node.Read(func(tx *bolt.Tx) error {
		if exists = queue.Exists(tx, name); !exists {
			return nil
		}
		return queue.ReadMessages(tx, name, false, func(m queue.Message) bool {
			env := json.RawMessage(m.Env)
			if !json.Valid(env) {
				env, _ = json.Marshal(string(m.Env))
			}
			// A timeline that cannot be read (state.db damaged there)
			// shows as none rather than hiding the message.
			events, err := m.Timeline()
			if err != nil {
				a.log.Warn("unreadable message timeline", "queue", name, "seq", m.Seq, "err", err)
			}
			out = append(out, AdminMessage{Seq: m.Seq, State: stateNames[m.State], Attempts: m.Attempts, Enqueued: m.Enqueued,
				Holder: m.Conn, LeasedAt: m.LeasedAt, LeaseUntil: m.LeaseUntil, Dead: m.Dead,
				Timeline: adminTimeline(events), TimelineDropped: m.TimelineDropped, Envelope: env})
			return len(out) < limit
		})
	})
	if err != nil {
		adminFail(w, err)
		return
	}
	if !exists {
		adminErr(w, http.StatusNotFound, "not_found", "no queue %q", name)
		return
	}
	adminJSON(w, http.StatusOK, out)
}

// AdminRedriveRequest is the body of POST /v1/queues/{name}/redrive. With
// Seqs, exactly those dead letters move, or none (the first that cannot
// move is the error). Without, every dead letter of the queue present
// when the request arrives moves, in seq order, at most Limit of them (0:
// no bound), leased ones passed over; the node proposes them
// queue.MaxRedrive per command, so a failure part way leaves the earlier
// commands done (the error says how many moved). To sends them all to
// one queue instead of the queues they died in.
type AdminRedriveRequest struct {
	Seqs  []uint64 `json:"seqs,omitempty"`
	To    string   `json:"to,omitempty"`
	Limit int      `json:"limit,omitempty"`
}

// AdminRedrive answers a redrive: how many moved, their new seqs, and
// for each where it went.
type AdminRedrive struct {
	Moved    int           `json:"moved"`
	Seqs     []uint64      `json:"seqs"`
	Messages []queue.Moved `json:"messages"`
}

// AdminDeleted answers DELETE /v1/queues/{name}/messages/{seq} with the
// message as it was.
type AdminDeleted struct {
	Queue    string          `json:"queue"`
	Seq      uint64          `json:"seq"`
	State    string          `json:"state"`
	Attempts int             `json:"attempts"`
	Holder   string          `json:"holder,omitempty"` // the lease a forced delete ended
	Dead     *queue.DeadInfo `json:"dead,omitempty"`
}

func (a *Admin) redriveQueue(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if !auth.ValidQueueName(name) {
		adminErr(w, http.StatusBadRequest, "bad_request", "%q is not a queue name", name)
		return
	}
	var req AdminRedriveRequest
	if r.ContentLength != 0 {
		if err := decodeBody(r, &req); err != nil {
			adminErr(w, http.StatusBadRequest, "bad_request", "%v", err)
			return
		}
	}
	if msg := checkRedriveRequest(name, &req); msg != "" {
		adminErr(w, http.StatusBadRequest, "bad_request", "%s", msg)
		return
	}
	out := AdminRedrive{Seqs: []uint64{}, Messages: []queue.Moved{}}
	add := func(rep *fsm.Reply) (*fsm.QueueRedriveResult, bool) {
		res, ok := rep.Result.(*fsm.QueueRedriveResult)
		if ok {
			for _, m := range res.Moved {
				out.Seqs = append(out.Seqs, m.Seq)
				out.Messages = append(out.Messages, m)
			}
			out.Moved = len(out.Messages)
		}
		return res, ok
	}
	if len(req.Seqs) > 0 {
		rep, ok := a.propose(w, r, fsm.TypeQueueRedrive, &fsm.QueueRedriveArgs{DLQ: name, Seqs: req.Seqs, To: req.To})
		if !ok {
			return
		}
		if _, ok := add(rep); !ok {
			adminErr(w, http.StatusInternalServerError, "internal", "the redrive answered no result")
			return
		}
	} else {
		// The dead letters there now: those that die again after their
		// redrive get higher seqs and do not come round again.
		var through uint64
		if err := a.node.Read(func(tx *bolt.Tx) (err error) {
			through, err = queue.LastSeq(tx, name)
			return err
		}); err != nil {
			adminFail(w, err)
			return
		}
		args := fsm.QueueRedriveArgs{DLQ: name, To: req.To, Through: through}
		for {
			args.Limit = queue.MaxRedrive
			if req.Limit > 0 {
				args.Limit = min(args.Limit, req.Limit-out.Moved)
			}
			rep, err := a.command(r, fsm.TypeQueueRedrive, &args)
			if err != nil {
				if out.Moved > 0 {
					err = fmt.Errorf("%w (%d dead letters of %s were moved before this)", err, out.Moved, name)
				}
				adminFail(w, err)
				return
			}
			res, ok := add(rep)
			if !ok {
				adminErr(w, http.StatusInternalServerError, "internal", "the redrive answered no result")
				return
			}
			if !res.More || (req.Limit > 0 && out.Moved >= req.Limit) {
				break
			}
			args.After = res.Last
		}
	}
	a.log.Info("dead letters redriven", "queue", name, "to", req.To, "moved", out.Moved, "operator", Operator(r))
	adminJSON(w, http.StatusOK, out)
}

// checkRedriveRequest checks a redrive as the state machine will, to
// answer a mistake before anything is proposed; it returns what is wrong.
func checkRedriveRequest(name string, req *AdminRedriveRequest) string {
	switch {
	case req.To != "" && !auth.ValidQueueName(req.To):
		return fmt.Sprintf("to: %q is not a queue name", req.To)
	case req.To == name:
		return "to: a queue cannot be redriven into itself"
	case req.Limit < 0:
		return "limit must not be negative"
	case len(req.Seqs) > 0 && req.Limit != 0:
		return "give seqs or a limit, not both"
	case len(req.Seqs) > queue.MaxRedrive:
		return fmt.Sprintf("at most %d seqs per request (a redrive by seqs is all or nothing)", queue.MaxRedrive)
	}
	seen := make(map[uint64]bool, len(req.Seqs))
	for _, s := range req.Seqs {
		if s < 1 || s > queue.MaxSeq {
			return fmt.Sprintf("seqs: %d is not a seq", s)
		}
		if seen[s] {
			return fmt.Sprintf("seqs: %d given twice", s)
		}
		seen[s] = true
	}
	return ""
}

func (a *Admin) deleteMessage(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if !auth.ValidQueueName(name) {
		adminErr(w, http.StatusBadRequest, "bad_request", "%q is not a queue name", name)
		return
	}
	seq, err := strconv.ParseUint(r.PathValue("seq"), 10, 64)
	if err != nil || seq < 1 || seq > queue.MaxSeq {
		adminErr(w, http.StatusBadRequest, "bad_request", "%q is not a seq", r.PathValue("seq"))
		return
	}
	var force bool
	if v := r.URL.Query().Get("force"); v != "" {
		if force, err = strconv.ParseBool(v); err != nil {
			adminErr(w, http.StatusBadRequest, "bad_request", "force must be true or false")
			return
		}
	}
	rep, ok := a.propose(w, r, fsm.TypeMessageDelete, &fsm.MessageDeleteArgs{Queue: name, Seq: seq, Force: force})
	if !ok {
		return
	}
	res, ok := rep.Result.(*fsm.MessageDeleteResult)
	if !ok {
		adminErr(w, http.StatusInternalServerError, "internal", "the delete answered no result")
		return
	}
	a.log.Info("message deleted", "queue", name, "seq", seq, "state", stateNames[res.State], "holder", res.Holder, "operator", Operator(r))
	adminJSON(w, http.StatusOK, AdminDeleted{Queue: name, Seq: seq, State: stateNames[res.State], Attempts: res.Attempts, Holder: res.Holder, Dead: res.Dead})
}
