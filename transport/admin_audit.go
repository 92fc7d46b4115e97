package transport

import (
	"bufio"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/mcpd/mcpd/audit"
	"github.com/mcpd/mcpd/fsm"
	bolt "go.etcd.io/bbolt"
)

// Limits of GET /v1/audit/entries.
const (
	defAuditPage = 1000
	maxAuditPage = 10000
)

// auditPub is the cluster's audit public key, nil without a cluster key.
func (a *Admin) auditPub() ed25519.PublicKey {
	if a.key == nil {
		return nil
	}
	return a.key.AuditPublicKey()
}

// auditKey answers GET /v1/audit/key: the public key that verifies the
// cluster's audit checkpoints.
func (a *Admin) auditKey(w http.ResponseWriter, r *http.Request) {
	pub := a.auditPub()
	if pub == nil {
		adminErr(w, http.StatusNotFound, "not_found", "this node has no cluster key, so no audit key")
		return
	}
	pem, _ := audit.PublicKeyPEM(pub)
	adminJSON(w, http.StatusOK, map[string]string{"public_key": audit.FormatPublicKey(pub), "pem": string(pem)})
}

// auditHead answers GET /v1/audit/head: the last applied entry's seq and
// hash.
func (a *Admin) auditHead(w http.ResponseWriter, r *http.Request) {
	head, err := a.node.FSM().AuditHead()
	if err != nil {
		adminFail(w, err)
		return
	}
	adminJSON(w, http.StatusOK, head)
}

// readAuditPage reads the entries after seq after from the committed
// state, in a short read transaction of its own: a long one would hold up
// the growth of state.db.
func (a *Admin) readAuditPage(after uint64, limit int) ([]audit.Record, error) {
	var recs []audit.Record
	err := a.node.FSM().ViewCommitted(func(tx *bolt.Tx) (err error) {
		recs, err = audit.ReadRange(tx, after, limit)
		return err
	})
	return recs, err
}

// auditEntries answers GET /v1/audit/entries?after=SEQ&limit=N with the
// entries as JSON lines, the form of 'mcpd audit export', up to the last
// command this node applied.
func (a *Admin) auditEntries(w http.ResponseWriter, r *http.Request) {
	after, err := queryUint(r, "after", 0)
	if err != nil {
		adminErr(w, http.StatusBadRequest, "bad_request", "after must be a sequence number")
		return
	}
	limit, err := queryUint(r, "limit", defAuditPage)
	if err != nil || limit < 1 || limit > maxAuditPage {
		adminErr(w, http.StatusBadRequest, "bad_request", "limit must be 1 to %d", maxAuditPage)
		return
	}
	// What was applied since the last commit of state.db is committed
	// first (it would be within the flush interval anyway).
	a.node.FSM().Flush()
	recs, err := a.readAuditPage(after, int(limit))
	if err != nil {
		adminFail(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	for i := range recs {
		if err := enc.Encode(&recs[i]); err != nil {
			return
		}
	}
	_ = bw.Flush()
}

// auditVerify answers GET /v1/audit/verify: the whole chain checked page
// by page against the cluster's audit key, then against the stored head.
func (a *Admin) auditVerify(w http.ResponseWriter, r *http.Request) {
	a.node.FSM().Flush()
	c := audit.NewChain(a.auditPub())
	var last uint64
	if err := a.node.FSM().ViewCommitted(func(tx *bolt.Tx) error {
		base, err := audit.Base(tx)
		if base.Seq > 0 {
			c.From(base)
			last = base.Seq
		}
		return err
	}); err != nil && !errors.Is(err, audit.ErrNoLog) {
		adminFail(w, err)
		return
	}
	for {
		recs, err := a.readAuditPage(last, maxAuditPage)
		if err != nil && !errors.Is(err, audit.ErrNoLog) {
			adminFail(w, err)
			return
		}
		ok := true
		for i := range recs {
			if ok = c.Add(&recs[i]); !ok {
				break
			}
			last = recs[i].Seq
		}
		if !ok || len(recs) < maxAuditPage {
			break
		}
	}
	rep := c.Report()
	if rep.OK {
		var head audit.Head
		_ = a.node.FSM().ViewCommitted(func(tx *bolt.Tx) (err error) {
			head, err = audit.ReadHead(tx)
			return err
		})
		switch {
		case head.Seq > last:
			rep.OK, rep.BrokenSeq, rep.Reason = false, last+1, audit.Missing
			rep.Detail = fmt.Sprintf("the stored head is at seq %d but the entries end at %d", head.Seq, last)
		case head.Seq < last:
			rep.OK, rep.BrokenSeq, rep.Reason = false, head.Seq+1, audit.Reordered
			rep.Detail = fmt.Sprintf("the entries go on to seq %d after the stored head at %d", last, head.Seq)
		case head.Hash != rep.Head.Hash:
			rep.OK, rep.BrokenSeq, rep.Reason = false, last, audit.Changed
			rep.Detail = "the stored head's hash is not the hash of the last entry"
		}
	}
	adminJSON(w, http.StatusOK, struct {
		Node string `json:"node"`
		audit.Report
	}{a.node.ID(), rep})
}

func queryUint(r *http.Request, name string, def uint64) (uint64, error) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return def, nil
	}
	return strconv.ParseUint(s, 10, 64)
}

// AuditPruneResult answers POST /v1/audit/prune.
type AuditPruneResult struct {
	Removed uint64 `json:"removed"` // entries removed by this request
	Base    uint64 `json:"base"`    // the chain now starts after this seq
	Steps   int    `json:"steps"`   // commands it took
}

// auditPrune answers POST /v1/audit/prune {"through": SEQ}: the entries
// up to SEQ go, in commands of at most fsm.MaxAuditPruneStep entries
// each, so that no apply grows large; the chain verifies after each. SEQ
// must be before the latest checkpoint. Export the entries first: what
// is pruned is gone from every node and from later snapshots.
func (a *Admin) auditPrune(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Through uint64 `json:"through"`
	}
	if err := decodeBody(r, &req); err != nil {
		adminErr(w, http.StatusBadRequest, "bad_request", "%v", err)
		return
	}
	if req.Through == 0 {
		adminErr(w, http.StatusBadRequest, "bad_request", "through must be the seq of the last entry to remove")
		return
	}
	var res AuditPruneResult
	for {
		rep, err := a.command(r, fsm.TypeAuditPrune, &fsm.AuditPruneArgs{Through: req.Through, Max: fsm.MaxAuditPruneStep})
		if err != nil {
			if res.Steps > 0 {
				a.log.Warn("audit log pruned in part", "operator", Operator(r), "through", res.Base, "removed", res.Removed, "err", err)
			}
			adminFail(w, err)
			return
		}
		step, ok := rep.Result.(*audit.PruneResult)
		if !ok {
			adminFail(w, errors.New("the prune step produced no result"))
			return
		}
		res.Removed += step.Removed
		res.Base = step.Base
		res.Steps++
		if step.Done {
			break
		}
	}
	a.log.Warn("audit log pruned", "operator", Operator(r), "through", res.Base, "removed", res.Removed)
	adminJSON(w, http.StatusOK, res)
}
