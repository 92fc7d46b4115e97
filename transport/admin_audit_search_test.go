package transport_test

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mcpd/mcpd/audit"
	"github.com/mcpd/mcpd/transport"
)

// searchAnswer is a decoded GET /v1/audit/search answer.
type searchAnswer struct {
	Entries []audit.Record
	Raw     []json.RawMessage
	Next    uint64
	Scanned int
}

func (s searchAnswer) kinds() []string {
	var out []string
	for _, r := range s.Entries {
		out = append(out, r.Kind)
	}
	return out
}

func (s searchAnswer) seqs() []uint64 {
	var out []uint64
	for _, r := range s.Entries {
		out = append(out, r.Seq)
	}
	return out
}

func auditSearch(t *testing.T, admin *adminAPI, query string) searchAnswer {
	t.Helper()
	out := admin.want(200, "GET", "/v1/audit/search?"+query, "", "")
	var a searchAnswer
	if err := json.Unmarshal(out["entries"], &a.Entries); err != nil {
		t.Fatalf("search %s: entries %s: %v", query, out["entries"], err)
	}
	if err := json.Unmarshal(out["entries"], &a.Raw); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(out["next"], &a.Next); err != nil {
		t.Fatalf("search %s: next %s: %v", query, out["next"], err)
	}
	if err := json.Unmarshal(out["scanned"], &a.Scanned); err != nil {
		t.Fatalf("search %s: scanned %s: %v", query, out["scanned"], err)
	}
	return a
}

// searchAll follows a search's next cursor to its end.
func searchAll(t *testing.T, admin *adminAPI, query string) (all searchAnswer, requests int) {
	t.Helper()
	var after uint64
	for requests = 1; requests < 1000; requests++ {
		a := auditSearch(t, admin, query+"&after="+strconv.FormatUint(after, 10))
		all.Entries = append(all.Entries, a.Entries...)
		all.Scanned += a.Scanned
		if a.Next == 0 {
			return all, requests
		}
		if a.Next == after {
			t.Fatalf("search %s: next %d again", query, after)
		}
		after = a.Next
	}
	t.Fatalf("search %s: no end", query)
	return
}

// The operator finds a message's timeline by its QUEUE/SEQ, entries by
// actor, kind and time, newest first, page after page; the entries are
// those of GET /v1/audit/entries; bad filters are refused.
func TestAdminAuditSearch(t *testing.T) {
	c, alice := one(t, "alice")
	admin := serveAdmin(t, transport.NewAdmin(c.Nodes[0].Node, nil, slog.New(slog.DiscardHandler)).LocalHandler())
	bob := login(t, c, c.Nodes[0].URL, "bob")
	q := qname(t, "q")

	// The first message is nacked, then acked; the second rejected.
	first := alice.enqueue(q, env("alice", `"one"`), "")
	cons := bob.consume(q, `"prefetch":1,"lease_ms":60000`)
	d := bob.deliver(cons)
	if f := bob.settle("nack", d, `"delay_ms":0`); f.op() != "ok" {
		t.Fatalf("nack: %s", f)
	}
	d = bob.deliver(cons)
	if f := bob.settle("ack", d, ""); f.op() != "ok" || d.int("seq") != int64(first) {
		t.Fatalf("ack of %d: %s", d.int("seq"), f)
	}
	second := alice.enqueue(q, env("alice", `"two"`), "")
	d = bob.deliver(cons)
	if f := bob.settle("reject", d, `"reason":"unparseable"`); f.op() != "ok" || d.int("seq") != int64(second) {
		t.Fatalf("reject of %d: %s", d.int("seq"), f)
	}

	// A message's timeline, oldest or newest first, by QUEUE/SEQ or by
	// queue and seq.
	id := q + "/" + strconv.FormatUint(first, 10)
	tl := auditSearch(t, admin, "id="+id)
	if !slices.Equal(tl.kinds(), []string{"nack", "ack"}) || tl.Next != 0 || tl.Entries[0].Actor != "bob" || tl.Entries[1].Subject != id {
		t.Fatalf("timeline of %s: %+v", id, tl)
	}
	desc := auditSearch(t, admin, "queue="+q+"&id="+strconv.FormatUint(first, 10)+"&order=desc")
	if !slices.Equal(desc.kinds(), []string{"ack", "nack"}) || desc.Entries[0].Seq <= desc.Entries[1].Seq {
		t.Fatalf("timeline newest first: %+v", desc)
	}
	if tl := auditSearch(t, admin, "id="+q+"/"+strconv.FormatUint(second, 10)); !slices.Equal(tl.kinds(), []string{"reject"}) {
		t.Fatalf("timeline of the rejected message: %+v", tl)
	}

	// By queue, actor, kind.
	all := auditSearch(t, admin, "queue="+q)
	if !slices.Equal(all.kinds(), []string{"enqueue", "consume", "nack", "ack", "enqueue", "reject"}) {
		t.Fatalf("queue %s: %v", q, all.kinds())
	}
	if a := auditSearch(t, admin, "queue="+q+"&actor=alice"); !slices.Equal(a.kinds(), []string{"enqueue", "enqueue"}) {
		t.Fatalf("alice's: %v", a.kinds())
	}
	if a := auditSearch(t, admin, "actor=bob&type=ack&type=reject"); !slices.Equal(a.kinds(), []string{"ack", "reject"}) {
		t.Fatalf("bob's acks and rejects: %v", a.kinds())
	}
	if a := auditSearch(t, admin, "actor=bob&outcome=ok&q=UNPARSE"); len(a.Entries) != 0 {
		t.Fatalf("the reason is not in the entry, only its digest: %v", a.kinds())
	}
	if a := auditSearch(t, admin, "q="+strings.ToUpper(q)+"/"+strconv.FormatUint(second, 10)); !slices.Equal(a.kinds(), []string{"reject"}) {
		t.Fatalf("text search: %v", a.kinds())
	}

	// By time: the ack's millisecond, as unix ms and as RFC 3339.
	ack := tl.Entries[1]
	for _, bounds := range []string{
		"since=" + strconv.FormatInt(ack.Time, 10) + "&until=" + strconv.FormatInt(ack.Time+1, 10),
		"since=" + time.UnixMilli(ack.Time).UTC().Format(time.RFC3339Nano) + "&until=" + time.UnixMilli(ack.Time+1).Format(time.RFC3339Nano),
	} {
		for _, order := range []string{"asc", "desc"} {
			a := auditSearch(t, admin, bounds+"&order="+order)
			if !slices.ContainsFunc(a.Entries, func(r audit.Record) bool { return r.Seq == ack.Seq }) {
				t.Fatalf("%s: %+v lacks the ack", bounds, a)
			}
			for _, r := range a.Entries {
				if r.Time != ack.Time {
					t.Fatalf("%s: entry at %d", bounds, r.Time)
				}
			}
		}
	}
	// Entries of the ack's millisecond before it (the nack, often) are
	// in too: since is a time, not a seq.
	a := auditSearch(t, admin, "queue="+q+"&since="+strconv.FormatInt(ack.Time, 10))
	if !slices.ContainsFunc(a.Entries, func(r audit.Record) bool { return r.Seq == ack.Seq }) || a.Entries[len(a.Entries)-1].Kind != "reject" ||
		slices.ContainsFunc(a.Entries, func(r audit.Record) bool { return r.Time < ack.Time }) {
		t.Fatalf("since the ack: %v", a.kinds())
	}

	// Page after page, either way, the cursor gives what one answer
	// gives.
	for _, order := range []string{"asc", "desc"} {
		whole := auditSearch(t, admin, "queue="+q+"&order="+order)
		paged, requests := searchAll(t, admin, "queue="+q+"&limit=1&order="+order)
		if !slices.Equal(paged.seqs(), whole.seqs()) || requests < len(whole.Entries) {
			t.Fatalf("%s: pages %v in %d requests, one answer %v", order, paged.seqs(), requests, whole.seqs())
		}
		if order == "desc" && !slices.IsSortedFunc(whole.seqs(), func(a, b uint64) int { return int(b) - int(a) }) {
			t.Fatalf("desc: %v", whole.seqs())
		}
	}

	// A search reads a bounded number of entries; the cursor goes on.
	var head struct{ Seq uint64 }
	if err := json.Unmarshal(mustRaw(t, admin, "/v1/audit/head"), &head); err != nil || head.Seq < 6 {
		t.Fatalf("head %+v: %v", head, err)
	}
	restore := transport.SetAuditScanLimits(5, 2)
	for _, order := range []string{"asc", "desc"} {
		a := auditSearch(t, admin, "type=no.such.kind&order="+order)
		wantNext := uint64(5)
		if order == "desc" {
			wantNext = head.Seq - 4
		}
		if a.Scanned != 5 || a.Next != wantNext || len(a.Entries) != 0 {
			t.Fatalf("bounded %s search: %+v, want next %d", order, a, wantNext)
		}
		whole, requests := searchAll(t, admin, "type=no.such.kind&order="+order)
		if whole.Scanned < int(head.Seq) || requests < int(head.Seq)/5 {
			t.Fatalf("the whole %s chain: scanned %d in %d requests, head %d", order, whole.Scanned, requests, head.Seq)
		}
		paged, _ := searchAll(t, admin, "queue="+q+"&order="+order)
		if order == "desc" {
			slices.Reverse(paged.Entries)
		}
		if !slices.Equal(paged.kinds(), all.kinds()) {
			t.Fatalf("%s, 5 entries a request: %v", order, paged.kinds())
		}
	}
	restore()

	// The entries are those GET /v1/audit/entries writes.
	line := bytes.TrimSpace(mustRaw(t, admin, "/v1/audit/entries?after="+strconv.FormatUint(ack.Seq-1, 10)+"&limit=1"))
	var got bytes.Buffer
	if err := json.Compact(&got, tl.Raw[1]); err != nil || got.String() != string(line) {
		t.Fatalf("search gives\n%s\nentries gives\n%s", got.String(), line)
	}

	// Bad filters.
	for query, msg := range map[string]string{
		"limit=0":          "limit must be 1 to 10000",
		"order=newest":     "order must be asc or desc",
		"since=yesterday":  "since must be an RFC 3339 time",
		"queue=no/such":    "is not a queue name",
		"kinds=ack":        `unknown parameter "kinds"`,
		"after=-3":         "after must be a sequence number",
		"since=5&until=4":  "since must be before until",
		"actor=a&after=%x": "does not parse",
	} {
		out := admin.want(400, "GET", "/v1/audit/search?"+query, "", "")
		var e transport.AdminError
		_ = json.Unmarshal([]byte(mustMarshal(out)), &e)
		if e.Code != "bad_request" || !strings.Contains(e.Error, msg) {
			t.Errorf("%s: %s, want bad_request saying %q", query, mustMarshal(out), msg)
		}
	}
}

// mustRaw GETs path and returns the answer's bytes.
func mustRaw(t *testing.T, admin *adminAPI, path string) []byte {
	t.Helper()
	resp, err := http.Get(admin.url + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %v %s", path, resp.StatusCode, err, b)
	}
	return b
}
