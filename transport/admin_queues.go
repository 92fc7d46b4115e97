package transport

import (
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/mcpd/mcpd/auth"
	"github.com/mcpd/mcpd/queue"
	bolt "go.etcd.io/bbolt"
)

// The queues of the admin API, read from the node's applied state:
//
//	GET /v1/queues                       every queue with its counts
//	GET /v1/queues/{name}/messages       its messages, oldest first (?limit=N, default 50, at most 1000):
//	                                     state, attempts, lease, dead-letter origin and reason, the envelope

func (a *Admin) queueRoutes() {
	a.mux.HandleFunc("GET /v1/queues", a.listQueues)
	a.mux.HandleFunc("GET /v1/queues/{name}/messages", a.peekQueue)
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
	Envelope   json.RawMessage `json:"envelope"`
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
			out = append(out, AdminMessage{Seq: m.Seq, State: stateNames[m.State], Attempts: m.Attempts, Enqueued: m.Enqueued,
				Holder: m.Conn, LeasedAt: m.LeasedAt, LeaseUntil: m.LeaseUntil, Dead: m.Dead, Envelope: env})
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
