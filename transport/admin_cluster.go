package transport

import (
	"errors"
	"net/http"
	"time"

	"github.com/mcpd/mcpd/cluster"
	"github.com/mcpd/mcpd/fsm"
)

// The cluster's membership in the admin API (docs/ops/cluster.md):
//
//	GET  /v1/cluster                       every server of the configuration and its status
//	POST /v1/cluster/join                  {"id", "addr"}: add a voter
//	POST /v1/cluster/remove                {"id"}: take a server out
//	POST /v1/cluster/transfer-leadership   {"id"} (optional): hand leadership over
//
// Any node answers; a follower has the leader make the changes.

// ClusterStatus is the answer of GET /v1/cluster.
type ClusterStatus struct {
	Node    string                 `json:"node"` // the node that answered
	Leader  string                 `json:"leader"`
	Servers []cluster.ServerStatus `json:"servers"`
	// ClusterLevel is the cluster level of the answering node's state
	// (fsm.ClusterLevel); Level the highest its version runs.
	ClusterLevel int `json:"cluster_level"`
	Level        int `json:"level"`
}

// ClusterChange is the body of the POST requests of /v1/cluster.
type ClusterChange struct {
	ID   string `json:"id,omitempty"`
	Addr string `json:"addr,omitempty"`
}

// ClusterChanged answers a change.
type ClusterChanged struct {
	OK     bool   `json:"ok"`
	Leader string `json:"leader,omitempty"`
}

func (a *Admin) clusterRoutes() {
	a.mux.HandleFunc("GET /v1/cluster", a.clusterStatus)
	a.mux.HandleFunc("POST /v1/cluster/join", a.clusterChange("join"))
	a.mux.HandleFunc("POST /v1/cluster/remove", a.clusterChange("remove"))
	a.mux.HandleFunc("POST /v1/cluster/transfer-leadership", a.clusterChange("transfer-leadership"))
}

func (a *Admin) clusterStatus(w http.ResponseWriter, r *http.Request) {
	servers, err := a.node.ClusterStatus(r.Context(), 3*time.Second)
	if err != nil {
		adminFail(w, err)
		return
	}
	level, err := a.node.ClusterLevel()
	if err != nil {
		adminFail(w, err)
		return
	}
	adminJSON(w, http.StatusOK, ClusterStatus{Node: a.node.ID(), Leader: a.node.Leader(), Servers: servers, ClusterLevel: level, Level: fsm.Level})
}

func (a *Admin) clusterChange(op string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req ClusterChange
		if r.ContentLength != 0 {
			if err := decodeBody(r, &req); err != nil {
				adminErr(w, http.StatusBadRequest, "bad_request", "%v", err)
				return
			}
		}
		var err error
		leader := ""
		switch op {
		case "join":
			if req.ID == "" || req.Addr == "" {
				adminErr(w, http.StatusBadRequest, "bad_request", "join needs id and addr (the new node's raft address)")
				return
			}
			err = a.node.Join(req.ID, req.Addr)
		case "remove":
			if req.ID == "" || req.Addr != "" {
				adminErr(w, http.StatusBadRequest, "bad_request", "remove needs id (and no addr)")
				return
			}
			err = a.node.Remove(req.ID)
		case "transfer-leadership":
			leader, err = a.node.TransferLeadership(req.ID)
		}
		a.log.Info("cluster membership request", "op", op, "id", req.ID, "addr", req.Addr, "operator", Operator(r), "err", err)
		switch {
		case errors.Is(err, cluster.ErrNotMember):
			adminErr(w, http.StatusNotFound, "not_found", "%v", err)
		case errors.Is(err, cluster.ErrMemberExists):
			adminErr(w, http.StatusConflict, "conflict", "%v", err)
		case errors.Is(err, cluster.ErrUnavailable), errors.Is(err, cluster.ErrShutdown):
			adminErr(w, http.StatusServiceUnavailable, "unavailable", "%v", err)
		case err != nil:
			adminErr(w, http.StatusInternalServerError, "failed", "%v", err)
		default:
			if leader == "" {
				leader = a.node.Leader()
			}
			adminJSON(w, http.StatusOK, ClusterChanged{OK: true, Leader: leader})
		}
	}
}
