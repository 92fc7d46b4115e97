package transport

import (
	"encoding/hex"
	"encoding/json"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"

	"github.com/mcpd/mcpd/audit"
	"github.com/mcpd/mcpd/cluster"
)

// HealthHandler serves /healthz (the process is up) and /readyz (a leader
// is known and this node has applied what it knows is committed). Both
// answer JSON with the node id, Raft role, leader and indexes, and the
// process figures (RSS, goroutines); /readyz answers 503 when not ready.
func HealthHandler(node *cluster.Node) http.Handler { return healthHandler(node, nil) }

// HealthHandler is the package's HealthHandler for the server's node that
// also reports the server's connections.
func (s *Server) HealthHandler() http.Handler { return healthHandler(s.node, s) }

func healthHandler(node *cluster.Node, ws *Server) http.Handler {
	status := func() map[string]any {
		var leader any
		if l := node.Leader(); l != "" {
			leader = l
		}
		m := map[string]any{
			"node":       node.ID(),
			"role":       node.Raft().State().String(),
			"leader":     leader,
			"applied":    node.FSM().AppliedIndex(),
			"commit":     node.Raft().CommitIndex(),
			"term":       node.Raft().CurrentTerm(),
			"goroutines": runtime.NumGoroutine(),
		}
		if rss, ok := residentBytes(); ok {
			m["rss_bytes"] = rss
		}
		if anon, file, ok := residentSplit(); ok {
			m["rss_anon_bytes"] = anon
			m["rss_file_bytes"] = file
		}
		if ws != nil {
			st := ws.Stats()
			m["connections"] = st.Conns
			m["max_conns"] = st.MaxConns
			m["refused_connections"] = st.Refused
			m["slow_consumer_closes"] = st.SlowClosed
		}
		return m
	}
	write := func(w http.ResponseWriter, code int, body map[string]any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(body)
	}
	mux := http.NewServeMux()
	// The audit checkpoint key is public: every node publishes it, so a
	// verifier can compare what several nodes say.
	mux.HandleFunc("/audit/key", func(w http.ResponseWriter, r *http.Request) {
		if ws == nil || ws.opt.ClusterKey == nil {
			write(w, http.StatusNotFound, map[string]any{"node": node.ID(), "error": "this node has no cluster key, so no audit key"})
			return
		}
		head, _ := node.FSM().AuditHead()
		write(w, http.StatusOK, map[string]any{"node": node.ID(), "public_key": audit.FormatPublicKey(ws.opt.ClusterKey.AuditPublicKey()), "head": head})
	})
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
		body["reason"] = node.NotReadyReason()
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

// residentBytes is the process's resident set size, from /proc/self/statm
// (Linux); false where that is not available.
func residentBytes() (int64, bool) {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0, false
	}
	pages, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return 0, false
	}
	return pages * int64(os.Getpagesize()), true
}

// residentSplit splits the resident set into anonymous memory (the Go
// heap, stacks) and file pages (mostly the memory-mapped bbolt files of
// state.db and the Raft log), from /proc/self/status (Linux).
func residentSplit() (anon, file int64, ok bool) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, 0, false
	}
	var found int
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, ":")
		var dst *int64
		switch k {
		case "RssAnon":
			dst = &anon
		case "RssFile":
			dst = &file
		default:
			continue
		}
		f := strings.Fields(v)
		if len(f) == 2 && f[1] == "kB" {
			if n, err := strconv.ParseInt(f[0], 10, 64); err == nil {
				*dst = n << 10
				found++
			}
		}
	}
	return anon, file, found == 2
}
