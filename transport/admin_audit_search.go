package transport

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/mcpd/mcpd/audit"
	"github.com/mcpd/mcpd/auth"
	"github.com/mcpd/mcpd/kv"
	bolt "go.etcd.io/bbolt"
)

// GET /v1/audit/search finds entries of the audit chain by what they say:
//
//	actor=A      the actor; repeat for any of several
//	type=K       the kind (also kind=K); repeat for any of several
//	outcome=O    the outcome ("ok" or an error code); repeat for any of several
//	queue=Q      entries about queue Q: its enqueues (send for an @agent
//	             inbox), consumers, the settles of its messages, the
//	             operator's queue.* commands on it, the denials of access
//	             to it, Redis commands on its key
//	id=X         entries whose subject names X: it is X, or X is the name
//	             or name/number of a numbered subject (a settle's message
//	             QUEUE/SEQ, a task's attempt TASK/N, a schedule's tick
//	             NAME@T: see namesID); with queue=Q a bare SEQ means
//	             Q/SEQ; repeat for any of several
//	since=T      at or after T, until=T before T: RFC 3339 or unix ms
//	q=S          S anywhere in the entry's JSON, ignoring case
//	after=SEQ    the cursor: past SEQ in the search's order
//	limit=N      at most N entries (1 to maxAuditPage, default 100)
//	order=desc   newest first (default asc, oldest first)
//
// Actor, type and outcome values ending in "*" match as prefixes
// ("task.*", "operator:*"). Filters combine with AND, the values of one
// with OR; an empty value is no filter. One request reads at most
// auditScanMax entries: the answer's next is the cursor to go on from
// (after=next), 0 when the search reached the end of the chain or of
// its time bounds.

// Limits of GET /v1/audit/search.
const (
	defAuditSearch = 100
	maxFilterVals  = 100 // values of one parameter
)

// The bounds of one search's work: the entries one request reads at
// most, and one of its read transactions. Tests lower them.
var auditScanMax, auditScanChunk = atomicInt(100_000), atomicInt(10_000)

func atomicInt(v int64) *atomic.Int64 {
	var a atomic.Int64
	a.Store(v)
	return &a
}

// AdminAuditSearch is the answer of GET /v1/audit/search.
type AdminAuditSearch struct {
	// Entries are the entries found, in the search's order, each as
	// GET /v1/audit/entries writes it.
	Entries []audit.Record `json:"entries"`
	// Next is the cursor to continue from (after=Next), 0 when nothing
	// is left to read.
	Next uint64 `json:"next"`
	// Scanned is how many entries the search read.
	Scanned int `json:"scanned"`
}

// auditQuery is a parsed search.
type auditQuery struct {
	actors, kinds, outcomes []string // any of; a trailing "*" makes a prefix
	queue                   string
	ids                     []string
	since, until            int64  // [since, until), unix ms; 0 is open
	text                    []byte // lowercase
	after                   uint64
	limit                   int
	desc                    bool
}

var auditSearchParams = []string{"actor", "type", "kind", "outcome", "queue", "id", "since", "until", "q", "after", "limit", "order"}

// parseAuditQuery parses the query string of a search.
func parseAuditQuery(raw string) (auditQuery, error) {
	q := auditQuery{limit: defAuditSearch}
	v, err := url.ParseQuery(raw)
	if err != nil {
		return q, fmt.Errorf("the query string does not parse: %v", err)
	}
	for name := range v {
		if !slices.Contains(auditSearchParams, name) {
			return q, fmt.Errorf("unknown parameter %q: the parameters are %s", name, strings.Join(auditSearchParams, ", "))
		}
	}
	// list returns the parameter's non-empty values.
	list := func(name string) ([]string, error) {
		var out []string
		for _, s := range v[name] {
			if s == "" {
				continue
			}
			if len(s) > audit.MaxField {
				return nil, fmt.Errorf("%s is longer than %d bytes", name, audit.MaxField)
			}
			out = append(out, s)
		}
		if len(out) > maxFilterVals {
			return nil, fmt.Errorf("%s is given %d times, at most %d", name, len(out), maxFilterVals)
		}
		return out, nil
	}
	one := func(name string) (string, error) {
		vals, err := list(name)
		if err != nil || len(vals) == 0 {
			return "", err
		}
		if len(vals) > 1 {
			return "", fmt.Errorf("%s may be given once", name)
		}
		return vals[0], nil
	}
	var kinds []string
	for _, f := range []struct {
		name string
		dst  *[]string
	}{{"actor", &q.actors}, {"type", &q.kinds}, {"kind", &kinds}, {"outcome", &q.outcomes}, {"id", &q.ids}} {
		if *f.dst, err = list(f.name); err != nil {
			return q, err
		}
	}
	q.kinds = append(q.kinds, kinds...)
	if q.queue, err = one("queue"); err != nil {
		return q, err
	}
	if q.queue != "" && !auth.ValidQueueName(q.queue) {
		return q, fmt.Errorf("queue %q is not a queue name", q.queue)
	}
	if q.queue != "" {
		for i, id := range q.ids {
			if isDigits(id) {
				q.ids[i] = q.queue + "/" + id
			}
		}
	}
	for _, t := range []struct {
		name string
		dst  *int64
	}{{"since", &q.since}, {"until", &q.until}} {
		s, err := one(t.name)
		if err != nil {
			return q, err
		}
		if s != "" {
			if *t.dst, err = parseAuditTime(t.name, s); err != nil {
				return q, err
			}
		}
	}
	if q.since != 0 && q.until != 0 && q.since >= q.until {
		return q, errors.New("since must be before until")
	}
	text, err := one("q")
	if err != nil {
		return q, err
	}
	q.text = bytes.ToLower([]byte(text))
	if s, err := one("after"); err != nil {
		return q, err
	} else if s != "" {
		if q.after, err = strconv.ParseUint(s, 10, 64); err != nil {
			return q, fmt.Errorf("after must be a sequence number, not %q", s)
		}
	}
	if s, err := one("limit"); err != nil {
		return q, err
	} else if s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxAuditPage {
			return q, fmt.Errorf("limit must be 1 to %d, not %q", maxAuditPage, s)
		}
		q.limit = n
	}
	switch s, err := one("order"); {
	case err != nil:
		return q, err
	case s == "desc":
		q.desc = true
	case s != "" && s != "asc":
		return q, fmt.Errorf("order must be asc or desc, not %q", s)
	}
	return q, nil
}

// parseAuditTime reads a time bound: unix milliseconds or RFC 3339.
func parseAuditTime(name, s string) (int64, error) {
	var ms int64
	if isDigits(s) {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s %q is out of range", name, s)
		}
		ms = n
	} else {
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return 0, fmt.Errorf("%s must be an RFC 3339 time (2006-01-02T15:04:05Z) or unix milliseconds, not %q", name, s)
		}
		ms = t.UnixMilli()
	}
	if ms <= 0 {
		return 0, fmt.Errorf("%s must be after 1970-01-01T00:00:00Z", name)
	}
	return ms, nil
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// match reports whether the search selects entry r.
func (q *auditQuery) match(r *audit.Record) bool {
	if (q.since != 0 && r.Time < q.since) || (q.until != 0 && r.Time >= q.until) {
		return false
	}
	if !matchAny(q.actors, r.Actor) || !matchAny(q.kinds, r.Kind) || !matchAny(q.outcomes, r.Outcome) {
		return false
	}
	if q.queue != "" && !concernsQueue(r, q.queue) {
		return false
	}
	if len(q.ids) > 0 && !slices.ContainsFunc(q.ids, func(id string) bool { return namesID(r.Subject, id) }) {
		return false
	}
	return len(q.text) == 0 || q.hasText(r)
}

// hasText reports whether q's text is in the entry: in its JSON (so that
// `"actor":"bob"` or a hash finds it), or in one of its strings as they
// are (JSON escapes quotes, backslashes, <, > and &).
func (q *auditQuery) hasText(r *audit.Record) bool {
	for _, s := range []string{r.Kind, r.Actor, r.Subject, r.Outcome} {
		if bytes.Contains(bytes.ToLower([]byte(s)), q.text) {
			return true
		}
	}
	b, err := json.Marshal(r)
	return err == nil && bytes.Contains(bytes.ToLower(b), q.text)
}

// matchAny: no patterns, or s matches one of them (exactly, or as a
// prefix for a pattern ending in "*").
func matchAny(patterns []string, s string) bool {
	if len(patterns) == 0 {
		return true
	}
	for _, p := range patterns {
		if pre, ok := strings.CutSuffix(p, "*"); (ok && strings.HasPrefix(s, pre)) || p == s {
			return true
		}
	}
	return false
}

// subjectParts is an entry's subject split the way fsm/audit.go writes
// numbered subjects: NAME, "/" or "@", a number or a list of them, then
// maybe a note after a space. "jobs/7" (a settle), "t-1/2" (a task's
// attempt), "nightly@1700000000000" (a schedule's tick), "jobs/7 (leased
// to c1)", "jobs.dlq/3,4 to jobs (2 moved)". A list may hold "*" (all)
// or "..." (cut short), which stand for any number.
type subjectParts struct {
	name, note string
	nums       []string // nil: the subject is not numbered
}

func parseSubject(s string) subjectParts {
	head, note, _ := strings.Cut(s, " ")
	i := strings.LastIndexAny(head, "/@")
	if i <= 0 || i == len(head)-1 {
		return subjectParts{}
	}
	nums := strings.Split(head[i+1:], ",")
	for _, n := range nums {
		if !isDigits(n) && n != "*" && n != "..." {
			return subjectParts{}
		}
	}
	return subjectParts{name: head[:i], note: note, nums: nums}
}

// has reports whether the numbered subject's list holds n.
func (p subjectParts) has(n string) bool {
	return slices.ContainsFunc(p.nums, func(m string) bool { return m == n || m == "*" || m == "..." })
}

// namesID reports whether an entry's subject names id: it is id, or it
// is numbered (subjectParts) and id is its name, or its name and one of
// its numbers ("jobs/7" names jobs/7 and jobs; "t-1/2" names t-1).
func namesID(subject, id string) bool {
	if subject == id {
		return true
	}
	p := parseSubject(subject)
	if p.nums == nil {
		return false
	}
	if id == p.name {
		return true
	}
	name, n, ok := cutNumber(id)
	return ok && name == p.name && p.has(n)
}

// cutNumber splits "NAME/N" or "NAME@N".
func cutNumber(id string) (name, n string, ok bool) {
	i := strings.LastIndexAny(id, "/@")
	if i <= 0 || !isDigits(id[i+1:]) {
		return "", "", false
	}
	return id[:i], id[i+1:], true
}

// concernsQueue reports whether an entry is about queue name, by the
// subjects fsm/audit.go and the auth events write.
func concernsQueue(r *audit.Record, name string) bool {
	switch r.Kind {
	case "consume":
		return r.Subject == name
	case "enqueue", "send":
		// QUEUE, or QUEUE/SEQ from cluster level 2 (fsm/levels.go).
		if r.Subject == name {
			return true
		}
		fallthrough
	case "ack", "nack", "reject", "extend":
		p := parseSubject(r.Subject)
		return p.nums != nil && p.name == name
	case "denied":
		// "OP NAME"; a send is denied naming the agent, not its inbox.
		op, target, _ := strings.Cut(r.Subject, " ")
		switch op {
		case auth.OpEnqueue, auth.OpConsume:
			return target == name
		case auth.OpSend:
			return "@"+target == name
		}
		return false
	}
	switch {
	case strings.HasPrefix(r.Kind, "queue."):
		// The operator's queue commands: the queue, or messages of it,
		// and maybe " to QUEUE" where they went.
		if r.Subject == name {
			return true
		}
		p := parseSubject(r.Subject)
		if p.nums == nil {
			return false
		}
		words := strings.Fields(p.note)
		for i := 0; i+1 < len(words); i++ {
			if words[i] == "to" && words[i+1] == name {
				return true
			}
		}
		return p.name == name
	case strings.HasPrefix(r.Kind, "redis."):
		return r.Subject == kv.QueuePrefix+name
	}
	return false
}

// auditSearch answers GET /v1/audit/search (above) with an
// AdminAuditSearch, reading the committed chain in short read
// transactions of auditScanChunk entries.
func (a *Admin) auditSearch(w http.ResponseWriter, r *http.Request) {
	q, err := parseAuditQuery(r.URL.RawQuery)
	if err != nil {
		adminErr(w, http.StatusBadRequest, "bad_request", "%s", err)
		return
	}
	a.node.FSM().Flush()
	out := AdminAuditSearch{Entries: []audit.Record{}}
	o := audit.ScanOptions{After: q.after, Desc: q.desc, Since: q.since, Until: q.until}
	scanMax, chunk := int(auditScanMax.Load()), int(auditScanChunk.Load())
	for out.Scanned < scanMax {
		o.Max = min(chunk, scanMax-out.Scanned)
		var res audit.ScanResult
		err := a.node.FSM().ViewCommitted(func(tx *bolt.Tx) (err error) {
			res, err = audit.Scan(tx, o, func(rec *audit.Record) bool {
				if q.match(rec) {
					out.Entries = append(out.Entries, *rec)
				}
				return len(out.Entries) < q.limit
			})
			return err
		})
		out.Scanned += res.Scanned
		if errors.Is(err, audit.ErrNoLog) {
			break
		}
		if err != nil {
			adminFail(w, err)
			return
		}
		if !res.More {
			out.Next = 0
			break
		}
		out.Next, o.After = res.Last, res.Last
		if len(out.Entries) >= q.limit {
			break
		}
	}
	adminJSON(w, http.StatusOK, out)
}
