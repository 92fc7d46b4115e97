package transport

import (
	"encoding/hex"
	"encoding/json"
	"net/http"

	"github.com/mcpd/mcpd/cluster"
)

// HealthHandler serves /healthz (the process is up) and /readyz (a leader
// is known and this node has applied what it knows is committed). Both
// answer JSON with the node id, Raft role, leader and indexes; /readyz
// answers 503 when not ready.
func HealthHandler(node *cluster.Node) http.Handler {
	status := func() map[string]any {
		var leader any
		if l := node.Leader(); l != "" {
			leader = l
		}
		return map[string]any{
			"node":    node.ID(),
			"role":    node.Raft().State().String(),
			"leader":  leader,
			"applied": node.FSM().AppliedIndex(),
			"commit":  node.Raft().CommitIndex(),
			"term":    node.Raft().CurrentTerm(),
		}
	}
	write := func(w http.ResponseWriter, code int, body map[string]any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(body)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		body := status()
		body["status"] = "up"
		write(w, http.StatusOK, body)
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		body := status()
		if node.Ready() {
			body["status"] = "ready"
			write(w, http.StatusOK, body)
			return
		}
		body["status"] = "not ready"
		write(w, http.StatusServiceUnavailable, body)
	})
	// /digest is for fault tests and operators comparing replicas: the
	// state digest and the applied index it was taken at. It reads the
	// whole state, so it is not for frequent polling.
	mux.HandleFunc("/digest", func(w http.ResponseWriter, r *http.Request) {
		sum, applied, err := node.FSM().Digest()
		if err != nil {
			write(w, http.StatusInternalServerError, map[string]any{"node": node.ID(), "error": err.Error()})
			return
		}
		write(w, http.StatusOK, map[string]any{"node": node.ID(), "applied": applied, "digest": hex.EncodeToString(sum[:])})
	})
	return mux
}
