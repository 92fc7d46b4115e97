package transport

import (
	"context"
	"crypto/ed25519"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/mcpd/mcpd/auth"
	"github.com/mcpd/mcpd/cluster"
	"github.com/mcpd/mcpd/fsm"
	bolt "go.etcd.io/bbolt"
)

// Admin serves the operator's JSON API: on the node's local unix socket
// (mode 0600 in the data directory: root on the box is the operator) and,
// when the operator gives a token, on the admin port over HTTPS.
type Admin struct {
	node *cluster.Node
	key  *auth.ClusterKey
	log  *slog.Logger
	mux  *http.ServeMux
	// enrollURLs are the UI's enrollment pages, for invite answers.
	enrollURLs []string
}

// AdminAgentRequest is the body of POST /v1/agents. An ed25519 agent
// brings its public key (the CLI makes the key pair and keeps the private
// half); an hmac-sha256 agent its secret, which the node seals under the
// cluster key before proposing it, so it never enters the log in clear.
type AdminAgentRequest struct {
	Name      string `json:"name"`
	Alg       string `json:"alg"`
	PublicKey []byte `json:"public_key,omitempty"`
	Secret    []byte `json:"secret,omitempty"`
	// TokenSHA256 is the SHA-256 of a Redis AUTH token the operator's
	// side made for the agent; the node never sees the token.
	TokenSHA256 []byte      `json:"token_sha256,omitempty"`
	Caps        []string    `json:"capabilities,omitempty"`
	ACL         auth.ACL    `json:"acl"`
	Limits      auth.Limits `json:"limits"`
}

// AdminError is the body of every error answer.
type AdminError struct {
	Code  string `json:"code"`
	Error string `json:"error"`
}

// maxAdminBody bounds a request body.
const maxAdminBody = 1 << 20

// NewAdmin returns the admin API of node. key seals HMAC secrets; without
// it hmac-sha256 agents cannot be added.
func NewAdmin(node *cluster.Node, key *auth.ClusterKey, log *slog.Logger) *Admin {
	if log == nil {
		log = slog.Default()
	}
	a := &Admin{node: node, key: key, log: log.With("component", "admin"), mux: http.NewServeMux()}
	a.mux.HandleFunc("GET /v1/agents", a.listAgents)
	a.mux.HandleFunc("GET /v1/agents/{name}", a.showAgent)
	a.mux.HandleFunc("POST /v1/agents", a.addAgent)
	a.mux.HandleFunc("POST /v1/agents/{name}/revoke", a.revokeAgent)
	a.mux.HandleFunc("GET /v1/audit/key", a.auditKey)
	a.mux.HandleFunc("GET /v1/audit/head", a.auditHead)
	a.mux.HandleFunc("GET /v1/audit/entries", a.auditEntries)
	a.mux.HandleFunc("GET /v1/audit/verify", a.auditVerify)
	a.mux.HandleFunc("POST /v1/audit/prune", a.auditPrune)
	a.mux.HandleFunc("GET /v1/audit/search", a.auditSearch) // admin_audit_search.go
	a.scheduleRoutes()
	a.queueRoutes()
	a.snapshotRoutes()
	a.routeTasks() // admin_tasks.go
	a.clusterRoutes()
	a.operatorRoutes()
	return a
}

// Handle adds a route to the admin API, for the packages that own what it
// serves.
func (a *Admin) Handle(pattern string, h http.HandlerFunc) { a.mux.HandleFunc(pattern, h) }

// operatorKey carries the operator's name in a request context.
type operatorKey struct{}

// Operator is who the admin request came from, for the audit log.
func Operator(r *http.Request) string {
	if s, ok := r.Context().Value(operatorKey{}).(string); ok {
		return s
	}
	return "operator"
}

// LocalHandler serves the unix socket: whoever can open it is the
// operator.
func (a *Admin) LocalHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mux.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), operatorKey{}, "operator:local")))
	})
}

// TokenHandler serves the admin port: every request must carry
// "Authorization: Bearer TOKEN".
func (a *Admin) TokenHandler(token string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || token == "" || subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="mcpd"`)
			adminErr(w, http.StatusUnauthorized, "unauthenticated", "an operator token is required")
			return
		}
		a.mux.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), operatorKey{}, "operator:token")))
	})
}

func adminJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func adminErr(w http.ResponseWriter, status int, code, format string, args ...any) {
	adminJSON(w, status, AdminError{Code: code, Error: fmt.Sprintf(format, args...)})
}

// adminFail answers an error from the node or the FSM.
func adminFail(w http.ResponseWriter, err error) {
	code, msg := errorCode(err)
	adminJSON(w, failStatus(code), AdminError{Code: code, Error: msg})
}

// failStatus is the HTTP status of an error code of errorCode.
func failStatus(code string) int {
	switch code {
	case "bad_request":
		return http.StatusBadRequest
	case "not_found":
		return http.StatusNotFound
	case "conflict", "full":
		return http.StatusConflict
	case "forbidden":
		return http.StatusForbidden
	case "unavailable":
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

func (a *Admin) listAgents(w http.ResponseWriter, r *http.Request) {
	agents := []auth.Agent{}
	err := a.node.Read(func(tx *bolt.Tx) error {
		return auth.ListAgents(tx, func(ag *auth.Agent) error {
			agents = append(agents, *ag)
			return nil
		})
	})
	if err != nil {
		adminFail(w, err)
		return
	}
	adminJSON(w, http.StatusOK, map[string]any{"agents": agents})
}

func (a *Admin) showAgent(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	var rec auth.Agent
	var ok bool
	err := a.node.Read(func(tx *bolt.Tx) (err error) {
		rec, ok, err = auth.GetAgent(tx, name)
		return err
	})
	switch {
	case err != nil:
		adminFail(w, err)
	case !ok:
		adminErr(w, http.StatusNotFound, "not_found", "no agent %q", name)
	default:
		adminJSON(w, http.StatusOK, rec)
	}
}

func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxAdminBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("request body: %v", err)
	}
	return nil
}

func (a *Admin) addAgent(w http.ResponseWriter, r *http.Request) {
	var req AdminAgentRequest
	if err := decodeBody(r, &req); err != nil {
		adminErr(w, http.StatusBadRequest, "bad_request", "%v", err)
		return
	}
	rec := auth.Agent{Name: req.Name, Alg: req.Alg, Caps: req.Caps, ACL: req.ACL, Limits: req.Limits, CreatedBy: Operator(r), TokenHash: req.TokenSHA256}
	switch req.Alg {
	case auth.AlgEd25519:
		if len(req.PublicKey) != ed25519.PublicKeySize || len(req.Secret) != 0 {
			adminErr(w, http.StatusBadRequest, "bad_request", "an ed25519 agent needs its %d-byte public_key and no secret", ed25519.PublicKeySize)
			return
		}
		rec.Public = req.PublicKey
	case auth.AlgHMACSHA256:
		if len(req.Secret) < 16 || len(req.PublicKey) != 0 {
			adminErr(w, http.StatusBadRequest, "bad_request", "an hmac-sha256 agent needs a secret of at least 16 bytes and no public_key")
			return
		}
		if a.key == nil {
			adminErr(w, http.StatusConflict, "conflict", "this node has no cluster key (--cluster-key-file): hmac-sha256 secrets cannot be stored encrypted")
			return
		}
		sealed, err := a.key.Seal(req.Name, req.Secret)
		if err != nil {
			adminFail(w, err)
			return
		}
		rec.Sealed, rec.SealKey = sealed, a.key.ID()
	default:
		adminErr(w, http.StatusBadRequest, "bad_request", "alg must be ed25519 or hmac-sha256")
		return
	}
	if err := rec.Check(); err != nil {
		adminErr(w, http.StatusBadRequest, "bad_request", "%v", err)
		return
	}
	a.call(w, r, fsm.TypeAgentAdd, &fsm.AgentAddArgs{Agent: rec}, http.StatusCreated)
}

func (a *Admin) revokeAgent(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Reason string `json:"reason"`
	}
	if r.ContentLength != 0 {
		if err := decodeBody(r, &req); err != nil {
			adminErr(w, http.StatusBadRequest, "bad_request", "%v", err)
			return
		}
	}
	name := r.PathValue("name")
	if !auth.ValidAgentName(name) {
		adminErr(w, http.StatusBadRequest, "bad_request", "%q is not an agent name", name)
		return
	}
	a.call(w, r, fsm.TypeAgentRevoke, &fsm.AgentRevokeArgs{Name: name, Reason: req.Reason}, http.StatusOK)
}

// propose runs an operator's command and answers its error; it reports
// whether the command succeeded, with its reply.
func (a *Admin) propose(w http.ResponseWriter, r *http.Request, t fsm.MessageType, body any) (*fsm.Reply, bool) {
	rep, err := a.command(r, t, body)
	if err != nil {
		adminFail(w, err)
		return nil, false
	}
	return rep, true
}

// call proposes an identity command and answers with the stored record.
func (a *Admin) call(w http.ResponseWriter, r *http.Request, t fsm.MessageType, body any, status int) {
	rep, err := a.command(r, t, body)
	if err != nil {
		adminFail(w, err)
		return
	}
	res, ok := rep.Result.(*fsm.AgentResult)
	if !ok {
		adminFail(w, errors.New("the command produced no agent record"))
		return
	}
	a.log.Info("agent identity changed", "op", map[fsm.MessageType]string{fsm.TypeAgentAdd: "add", fsm.TypeAgentRevoke: "revoke"}[t],
		"agent", res.Agent.Name, "operator", Operator(r))
	adminJSON(w, status, res.Agent)
}

// Call proposes a command as actor and answers its reply, or its error:
// the node's, or the business error the command was refused with.
func (a *Admin) Call(ctx context.Context, actor string, t fsm.MessageType, body any) (*fsm.Reply, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	rep, err := a.node.Call(ctx, t, actor, body)
	if err == nil {
		err = rep.Err
	}
	if err != nil {
		return nil, err
	}
	return rep, nil
}

// command proposes an operator's command as the request's operator:
// Call without the answer, for a request made of several commands.
func (a *Admin) command(r *http.Request, t fsm.MessageType, body any) (*fsm.Reply, error) {
	return a.Call(r.Context(), Operator(r), t, body)
}

// Serve answers an admin request on behalf of operator, who is named in
// the audit log of whatever the request changes ("operator:NAME"). The
// web UI calls it once it authenticated the request.
func (a *Admin) Serve(w http.ResponseWriter, r *http.Request, operator string) {
	a.mux.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), operatorKey{}, operator)))
}

// WriteJSON answers v with status, as the admin API does.
func WriteJSON(w http.ResponseWriter, status int, v any) { adminJSON(w, status, v) }

// WriteError answers an admin API error with a code and a message.
func WriteError(w http.ResponseWriter, status int, code, msg string) {
	adminJSON(w, status, AdminError{Code: code, Error: msg})
}

// WriteFail answers an error from the node or the FSM, with the status
// its code maps to.
func WriteFail(w http.ResponseWriter, err error) { adminFail(w, err) }
