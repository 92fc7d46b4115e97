package transport

import (
	"strings"
	"testing"

	"github.com/mcpd/mcpd/audit"
)

// The entries of the match table, as fsm/audit.go and the auth events
// write them.
var searchEntries = map[string]audit.Record{
	"enqueue":      rec(1, 1000, "enqueue", "alice", "jobs", "ok"),
	"send":         rec(2, 1000, "send", "alice", "@bob", "ok"),
	"consume":      rec(3, 1001, "consume", "bob", "jobs", "ok"),
	"ack":          rec(4, 1002, "ack", "bob", "jobs/7", "ok"),
	"nack":         rec(5, 1003, "nack", "bob", "jobs/7", "ok"),
	"reject":       rec(6, 1004, "reject", "bob", "jobs/8", "not_found"),
	"ackOther":     rec(7, 1005, "ack", "bob", "jobs.dlq/7", "ok"),
	"declare":      rec(8, 1006, "queue.declare", "operator:local", "jobs", "ok"),
	"delete":       rec(9, 1007, "queue.delete", "operator:ann", "jobs/9 (leased to c1)", "ok"),
	"redrive":      rec(10, 1008, "queue.redrive", "operator:ann", "jobs.dlq/3,4 to jobs (2 moved)", "ok"),
	"redriveAll":   rec(11, 1009, "queue.redrive", "operator:ann", "jobs.dlq/*", "ok"),
	"deniedEnq":    rec(12, 1010, "denied", "eve", "enqueue jobs", "forbidden"),
	"deniedSend":   rec(13, 1011, "denied", "eve", "send bob", "forbidden"),
	"publish":      rec(14, 1012, "publish", "alice", "jobs", "ok"),
	"xadd":         rec(15, 1013, "redis.xadd", "alice", "mcp:jobs", "ok"),
	"redisKey":     rec(16, 1014, "redis.set", "alice", "jobs", "ok"),
	"badSig":       rec(17, 1015, "bad_signature", "alice", "m-42", "bad_signature"),
	"taskSubmit":   rec(18, 1016, "task.submit", "alice", "t-1", "ok"),
	"taskDone":     rec(19, 1017, "task.done", "worker", "t-1/2", "ok"),
	"taskDone12":   rec(20, 1018, "task.done", "worker", "t-12/1", "ok"),
	"fire":         rec(21, 1019, "schedule.fire", "", "nightly@1700000000000", "ok"),
	"nodeStarted":  rec(22, 1020, "node.started", "", "n1", "ok"),
	"denyQuoteAmp": rec(23, 1021, "denied", "eve", `redis key "a<b>&c"`, "forbidden"),
	// From cluster level 2 an enqueue names the message it stored.
	"enqueueSeq": rec(24, 1022, "enqueue", "carol", "jobs/7", "ok"),
	"sendSeq":    rec(25, 1023, "send", "carol", "@bob/3", "ok"),
}

func rec(seq uint64, ts int64, kind, actor, subject, outcome string) audit.Record {
	return audit.Record{Entry: audit.Entry{Seq: seq, Time: ts, Kind: kind, Actor: actor, Subject: subject, Outcome: outcome, Hash: [32]byte{0xab, 0xcd}}}
}

// The filters of a search, each against every kind of entry.
func TestAuditQueryMatch(t *testing.T) {
	for _, tc := range []struct {
		query string
		want  string // the names of searchEntries it selects, space-separated
	}{
		{"", "*"},
		{"actor=bob", "consume ack nack reject ackOther"},
		{"actor=operator:*", "declare delete redrive redriveAll"},
		{"actor=eve&actor=worker", "deniedEnq deniedSend taskDone taskDone12 denyQuoteAmp"},
		{"actor=", "*"},
		{"type=ack", "ack ackOther"},
		{"type=ack&type=nack&kind=reject", "ack nack reject ackOther"},
		{"type=task.*", "taskSubmit taskDone taskDone12"},
		{"type=queue.*&actor=operator:ann", "delete redrive redriveAll"},
		{"outcome=forbidden", "deniedEnq deniedSend denyQuoteAmp"},
		{"queue=jobs", "enqueue enqueueSeq consume ack nack reject declare delete redrive deniedEnq xadd"},
		{"queue=jobs.dlq", "ackOther redrive redriveAll"},
		{"queue=@bob", "send sendSeq deniedSend"},
		// A message's timeline: its settles, the operator's commands on it.
		{"id=jobs/7", "enqueueSeq ack nack"},
		{"queue=jobs&id=7", "enqueueSeq ack nack"},
		{"queue=jobs&id=9", "delete"},
		{"id=jobs.dlq/4", "redrive redriveAll"},
		{"id=jobs.dlq/5", "redriveAll"},
		{"id=jobs/7&id=m-42", "enqueueSeq ack nack badSig"},
		{"id=jobs", "enqueue enqueueSeq consume ack nack reject declare delete publish redisKey"},
		{"id=t-1", "taskSubmit taskDone"},
		{"id=t-1/2", "taskDone"},
		{"id=nightly", "fire"},
		{"id=nightly@1700000000000", "fire"},
		{"id=enqueue", ""},
		{"id=7", ""},
		{"since=1004&until=1006", "reject ackOther"},
		{"since=1970-01-01T00:00:01.004Z&until=1970-01-01T00:00:01.006Z", "reject ackOther"},
		{"q=BAD_SIG", "badSig"},
		{"q=%22actor%22:%22eve%22", "deniedEnq deniedSend denyQuoteAmp"},
		{"q=a<b>%26", "denyQuoteAmp"},
		{"q=abcd", "*"}, // the hash
		{"queue=jobs&actor=bob&type=nack", "nack"},
	} {
		q, err := parseAuditQuery(tc.query)
		if err != nil {
			t.Fatalf("%q: %v", tc.query, err)
		}
		var got []string
		for name, r := range searchEntries {
			if q.match(&r) {
				got = append(got, name)
			}
		}
		want := strings.Fields(tc.want)
		if tc.want == "*" {
			want = nil
			for name := range searchEntries {
				want = append(want, name)
			}
		}
		if !sameSet(got, want) {
			t.Errorf("%q selects %v, want %v", tc.query, got, want)
		}
	}
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	in := map[string]bool{}
	for _, s := range a {
		in[s] = true
	}
	for _, s := range b {
		if !in[s] {
			return false
		}
	}
	return true
}

// What the query string says besides filters, and what it refuses.
func TestAuditQueryParse(t *testing.T) {
	q, err := parseAuditQuery("after=17&limit=5&order=desc&since=2024-05-01T12:00:00Z&until=1714568400001")
	if err != nil || q.after != 17 || q.limit != 5 || !q.desc || q.since != 1714564800000 || q.until != 1714568400001 {
		t.Fatalf("%+v %v", q, err)
	}
	if q, err := parseAuditQuery("order=asc"); err != nil || q.desc || q.limit != defAuditSearch || q.after != 0 {
		t.Fatalf("defaults: %+v %v", q, err)
	}
	long := strings.Repeat("x", audit.MaxField+1)
	for query, msg := range map[string]string{
		"kind2=x":                    `unknown parameter "kind2"`,
		"after=-1":                   "after must be a sequence number",
		"after=x":                    "after must be a sequence number",
		"limit=0":                    "limit must be 1 to 10000",
		"limit=10001":                "limit must be 1 to 10000",
		"limit=1&limit=2":            "limit may be given once",
		"order=newest":               "order must be asc or desc",
		"since=yesterday":            "since must be an RFC 3339 time",
		"until=2024-05-01":           "until must be an RFC 3339 time",
		"since=0":                    "since must be after 1970",
		"since=99999999999999999999": "out of range",
		"since=2000&until=1000":      "since must be before until",
		"since=1000&until=1000":      "since must be before until",
		"queue=a/b":                  `queue "a/b" is not a queue name`,
		"queue=a&queue=b":            "queue may be given once",
		"actor=" + long:              "actor is longer than 1024 bytes",
		"q=" + long:                  "q is longer than 1024 bytes",
		"type=a" + strings.Repeat("&type=a", maxFilterVals): "type is given 101 times",
		"q=%zz": "the query string does not parse",
	} {
		if _, err := parseAuditQuery(query); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%.60q: %v, want an error saying %q", query, err, msg)
		}
	}
}
