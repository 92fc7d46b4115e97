package transport

import (
	"net/http"
	"time"

	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/operator"
	bolt "go.etcd.io/bbolt"
)

// The operators of the admin UI (docs/ops/ui.md): invites, the list, and
// removal. Enrolling and logging in happen in the UI itself (package
// webui), with a passkey.

// AdminInviteRequest is the body of POST /v1/operators/invites.
type AdminInviteRequest struct {
	Name string `json:"name"`
	// TTL is how long the code may be redeemed, as a Go duration
	// ("24h"); one day when empty.
	TTL string `json:"ttl,omitempty"`
}

// AdminInvite answers an invite: the one-time code, shown once and
// stored only as a hash, and where to redeem it.
type AdminInvite struct {
	Name      string   `json:"name"`
	Code      string   `json:"code"`
	ExpiresMs int64    `json:"expires_ms"`
	EnrollURL []string `json:"enroll_urls,omitempty"`
}

// AdminOperators answers GET /v1/operators.
type AdminOperators struct {
	Operators []operator.Operator `json:"operators"`
	Invites   []operator.Invite   `json:"invites"`
}

// DefaultInviteTTL is how long an invite lives unless asked otherwise.
const DefaultInviteTTL = 24 * time.Hour

func (a *Admin) operatorRoutes() {
	a.mux.HandleFunc("POST /v1/operators/invites", a.inviteOperator)
	a.mux.HandleFunc("GET /v1/operators", a.listOperators)
	a.mux.HandleFunc("DELETE /v1/operators/{name}", a.removeOperator)
}

// SetEnrollURLs tells the API where the UI's enrollment page is, for the
// answer of an invite.
func (a *Admin) SetEnrollURLs(urls []string) { a.enrollURLs = urls }

func (a *Admin) inviteOperator(w http.ResponseWriter, r *http.Request) {
	var req AdminInviteRequest
	if err := decodeBody(r, &req); err != nil {
		adminErr(w, http.StatusBadRequest, "bad_request", "%v", err)
		return
	}
	ttl := DefaultInviteTTL
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil {
			adminErr(w, http.StatusBadRequest, "bad_request", "ttl: %v", err)
			return
		}
		ttl = d
	}
	code := operator.NewCode()
	args := fsm.OperatorInviteArgs{Name: req.Name, CodeHash: operator.HashCode(code), TTLMs: ttl.Milliseconds()}
	rep, ok := a.propose(w, r, fsm.TypeOperatorInvite, &args)
	if !ok {
		return
	}
	res, _ := rep.Result.(*fsm.OperatorResult)
	if res == nil {
		adminErr(w, http.StatusInternalServerError, "internal", "the invite command answered no result")
		return
	}
	a.log.Info("operator invited", "name", req.Name, "by", Operator(r), "expires", time.UnixMilli(res.Expires).UTC())
	adminJSON(w, http.StatusCreated, AdminInvite{Name: req.Name, Code: code, ExpiresMs: res.Expires, EnrollURL: a.enrollURLs})
}

func (a *Admin) listOperators(w http.ResponseWriter, r *http.Request) {
	res := AdminOperators{Operators: []operator.Operator{}, Invites: []operator.Invite{}}
	now := time.Now().UnixMilli()
	err := a.node.Read(func(tx *bolt.Tx) error {
		if err := operator.List(tx, func(op *operator.Operator) error {
			res.Operators = append(res.Operators, *op)
			return nil
		}); err != nil {
			return err
		}
		invites, err := operator.Invites(tx)
		for _, in := range invites {
			if in.Expires > now {
				res.Invites = append(res.Invites, in)
			}
		}
		return err
	})
	if err != nil {
		adminFail(w, err)
		return
	}
	adminJSON(w, http.StatusOK, res)
}

func (a *Admin) removeOperator(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if _, ok := a.propose(w, r, fsm.TypeOperatorRemove, &fsm.OperatorRemoveArgs{Name: name}); !ok {
		return
	}
	a.log.Info("operator removed", "name", name, "by", Operator(r))
	w.WriteHeader(http.StatusNoContent)
}
