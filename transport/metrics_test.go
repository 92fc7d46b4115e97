package transport_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/mcpd/mcpd/client"
	"github.com/mcpd/mcpd/internal/testcluster"
	"github.com/mcpd/mcpd/transport"
)

// scrape gathers a registry into name -> label set -> value, the label set
// written k=v,k=v in label-name order. A histogram's value is its count.
func scrape(t *testing.T, reg *prometheus.Registry) map[string]map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]map[string]float64{}
	for _, mf := range mfs {
		vals := map[string]float64{}
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, lp := range m.GetLabel() {
				ls = append(ls, lp.GetName()+"="+lp.GetValue())
			}
			sort.Strings(ls)
			vals[strings.Join(ls, ",")] = metricValue(m)
		}
		out[mf.GetName()] = vals
	}
	return out
}

func metricValue(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	case m.Untyped != nil:
		return m.Untyped.GetValue()
	}
	return -1
}

func wantMetric(t *testing.T, got map[string]map[string]float64, node, name, labels string, want float64) {
	t.Helper()
	v, ok := got[name][labels]
	if !ok {
		t.Errorf("%s: %s{%s} missing (have %v)", node, name, labels, got[name])
		return
	}
	if v != want {
		t.Errorf("%s: %s{%s} = %v, want %v", node, name, labels, v, want)
	}
}

// TestMetrics drives a three-node cluster through one follower (enqueues,
// a consumer that acks and nacks, a task graph, a Redis XADD, a failed
// authentication) and checks what every node's registry reports: the
// state gauges agree on every node, the counters count on the node that
// served the clients only, and raft's own metrics are there.
func TestMetrics(t *testing.T) {
	transport.InstallRaftMetrics()
	c := testcluster.Start(t, 3, testcluster.Options{})
	leader := c.WaitLeader()
	nd := c.Followers()[0]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	prod := c.Dial("producer", nd.URL)
	for range 5 {
		if _, err := prod.Enqueue(ctx, "jobs", map[string]string{"task": "x"}); err != nil {
			t.Fatal(err)
		}
	}
	worker := c.Dial("worker", nd.URL)
	cons, err := worker.Consume(ctx, "jobs", client.ConsumeOptions{Prefetch: 5, LeaseMs: 60_000})
	if err != nil {
		t.Fatal(err)
	}
	// Five first deliveries: ack three, nack one (redelivered at once),
	// keep one leased.
	var first []*client.Delivery
	for range 5 {
		d, err := cons.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		first = append(first, d)
	}
	for _, d := range first[:3] {
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := first[3].Nack(ctx, 0); err != nil {
		t.Fatal(err)
	}
	again, err := cons.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if again.Seq != first[3].Seq || again.Attempt != 2 {
		t.Fatalf("redelivery seq %d attempt %d, want seq %d attempt 2", again.Seq, again.Attempt, first[3].Seq)
	}
	if err := again.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, err := prod.SubmitTasks(ctx, client.SubmitRequest{Intent: "metrics", Tasks: []client.TaskSpec{
		{Ref: "a", Capability: "cap.metrics", Input: map[string]int{"n": 1}},
		{Ref: "b", Capability: "cap.metrics", Input: map[string]int{"n": 2}, Deps: []string{"a"}},
	}}); err != nil {
		t.Fatal(err)
	}

	rc := dialRESP(t, startRESP(t, nd))
	if got := rc.do("XADD", "mcp:jobs2", "*", "k", "v"); strings.HasPrefix(got, "-") {
		t.Fatalf("XADD: %s", got)
	}

	bad := dialRaw(t, c, leader.URL)
	bad.sendText(`{"op":"auth","rid":1,"agent":"ghost","alg":"ed25519","sig":"AAAA"}`)
	if f := bad.next(isReply(json.RawMessage("1"))); f.str("code") != "unauthenticated" {
		t.Fatalf("auth of an unknown agent: %s", f)
	}
	c.WaitApplied()
	// Clients have their replies once their commands are applied; the
	// node counts a command when its submission completes, a moment later.
	testcluster.WaitFor(t, 10*time.Second, func() bool {
		got := scrape(t, transport.NewMetricsRegistry(nd.Node, nd.WS))
		var n float64
		for _, v := range got["mcpd_commit_latency_seconds"] {
			n += v
		}
		return n >= 13 // 5 enqueues, a consume, 4 acks, a nack, a task submission, an XADD
	})

	for _, n := range c.Nodes {
		before := float64(n.Node.FSM().AppliedIndex())
		got := scrape(t, transport.NewMetricsRegistry(n.Node, n.WS))
		after := float64(n.Node.FSM().AppliedIndex())
		// The applied state: the same on every node.
		wantMetric(t, got, n.ID, "mcpd_queue_messages", "queue=jobs,state=ready", 0)
		wantMetric(t, got, n.ID, "mcpd_queue_messages", "queue=jobs,state=inflight", 1)
		wantMetric(t, got, n.ID, "mcpd_queue_messages", "queue=jobs,state=delayed", 0)
		wantMetric(t, got, n.ID, "mcpd_queue_consumers", "queue=jobs", 1)
		wantMetric(t, got, n.ID, "mcpd_queue_enqueued_total", "queue=jobs", 5)
		wantMetric(t, got, n.ID, "mcpd_queue_enqueued_total", "queue=jobs2", 1)
		wantMetric(t, got, n.ID, "mcpd_queue_dead_lettered_total", "queue=jobs", 0)
		wantMetric(t, got, n.ID, "mcpd_tasks", "state=ready", 1)
		wantMetric(t, got, n.ID, "mcpd_tasks", "state=waiting", 1)
		wantMetric(t, got, n.ID, "mcpd_tasks", "state=succeeded", 0)
		wantMetric(t, got, n.ID, "mcpd_metrics_state_read_ok", "", 1)
		// Background commands (expirations, presence) may be applied
		// meanwhile.
		if v := got["mcpd_raft_applied_index"][""]; v < before || v > after {
			t.Errorf("%s: mcpd_raft_applied_index = %v, want within [%v, %v]", n.ID, v, before, after)
		}
		// The leader can change at any time (under load the test
		// cluster's 300 ms timeouts let a stalled node lose its lease):
		// the gauge must say what the node is, scraped while that stays.
		for attempt := 0; ; attempt++ {
			was := n.Node.IsLeader()
			g := scrape(t, transport.NewMetricsRegistry(n.Node, n.WS))
			if n.Node.IsLeader() != was && attempt < 20 {
				continue
			}
			isLeader := 0.0
			if was {
				isLeader = 1
			}
			wantMetric(t, g, n.ID, "mcpd_raft_is_leader", "", isLeader)
			break
		}
		if _, ok := got["mcpd_raft_last_contact_seconds"][""]; !ok {
			t.Errorf("%s: no mcpd_raft_last_contact_seconds", n.ID)
		}
		// hashicorp/raft's own metrics (process-wide, so every node's
		// registry shows the same ones).
		for _, name := range []string{"mcpd_raft_commit_seconds", "mcpd_raft_fsm_apply_seconds", "mcpd_raft_leader_dispatch_seconds"} {
			if got[name][""] <= 0 {
				t.Errorf("%s: %s has no observations", n.ID, name)
			}
		}
		if got["mcpd_raft_state_changes_total"]["state=leader"] < 1 {
			t.Errorf("%s: mcpd_raft_state_changes_total{state=leader} = %v, want >= 1", n.ID, got["mcpd_raft_state_changes_total"]["state=leader"])
		}
		if _, ok := got["go_goroutines"]; !ok {
			t.Errorf("%s: no Go runtime metrics", n.ID)
		}

		// What this node served.
		if n != nd {
			if v := got["mcpd_deliveries_total"][""]; v != 0 {
				t.Errorf("%s: mcpd_deliveries_total = %v on a node no consumer is connected to", n.ID, v)
			}
			if v := got["mcpd_commands_total"]["op=enqueue,result=ok,transport=websocket"]; v != 0 {
				t.Errorf("%s: %v enqueues counted on a node no producer is connected to", n.ID, v)
			}
			continue
		}
		wantMetric(t, got, n.ID, "mcpd_commands_total", "op=enqueue,result=ok,transport=websocket", 5)
		wantMetric(t, got, n.ID, "mcpd_commands_total", "op=ack,result=ok,transport=websocket", 4)
		wantMetric(t, got, n.ID, "mcpd_commands_total", "op=nack,result=ok,transport=websocket", 1)
		wantMetric(t, got, n.ID, "mcpd_commands_total", "op=xadd,result=ok,transport=redis", 1)
		wantMetric(t, got, n.ID, "mcpd_commit_latency_seconds", "op=enqueue,transport=websocket", 5)
		wantMetric(t, got, n.ID, "mcpd_commit_latency_seconds", "op=xadd,transport=redis", 1)
		wantMetric(t, got, n.ID, "mcpd_deliveries_total", "", 6)
		wantMetric(t, got, n.ID, "mcpd_redeliveries_total", "", 1)
		wantMetric(t, got, n.ID, "mcpd_connections", "transport=websocket", 2)
		wantMetric(t, got, n.ID, "mcpd_connections", "transport=redis", 1)
	}
	got := scrape(t, transport.NewMetricsRegistry(leader.Node, leader.WS))
	wantMetric(t, got, leader.ID, "mcpd_auth_failures_total", "code=unauthenticated,transport=websocket", 1)
}

// TestMetricsHandler checks the HTTP face: /metrics in the Prometheus text
// format, anything else 404.
func TestMetricsHandler(t *testing.T) {
	c := testcluster.Start(t, 1, testcluster.Options{})
	nd := c.WaitLeader()
	cl := c.Dial("producer", nd.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cl.Enqueue(ctx, "jobs", "x"); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(transport.NewMetricsHandler(nd.Node, nd.WS))
	defer srv.Close()
	var body []byte
	// The client has its reply once the command is applied; the node
	// counts it when the submission completes, a moment later.
	testcluster.WaitFor(t, 10*time.Second, func() bool {
		resp, err := http.Get(srv.URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
			t.Fatalf("GET /metrics: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		return strings.Contains(string(body), "mcpd_commit_latency_seconds_count")
	})
	for _, want := range []string{
		`mcpd_queue_messages{queue="jobs",state="ready"} 1`,
		`mcpd_queue_enqueued_total{queue="jobs"} 1`,
		`mcpd_commands_total{op="enqueue",result="ok",transport="websocket"} 1`,
		`# TYPE mcpd_commit_latency_seconds histogram`,
		`mcpd_raft_is_leader 1`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	resp, err := http.Get(srv.URL + "/other")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /other: %d, want 404", resp.StatusCode)
	}
}

// TestMetricsDocumented checks that the operator's page documents every
// metric, and that it and the sample dashboard name only metrics that
// exist.
func TestMetricsDocumented(t *testing.T) {
	c := testcluster.Start(t, 1, testcluster.Options{})
	names := transport.MetricNames(c.WaitLeader().Node)
	if len(names) < 20 {
		t.Fatalf("only %d metric names described: %v", len(names), names)
	}
	mention := regexp.MustCompile(`mcpd_[a-z_]+`)
	for _, file := range []string{"../docs/ops/metrics.md", "../docs/grafana-dashboard.json"} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for _, m := range mention.FindAllString(string(b), -1) {
			if strings.HasSuffix(m, "_") {
				continue // a family, as in mcpd_queue_*
			}
			base := m
			for _, suffix := range []string{"_bucket", "_count", "_sum"} {
				if s, ok := strings.CutSuffix(m, suffix); ok && names[s] {
					base = s
				}
			}
			if !names[base] {
				t.Errorf("%s names %s, which mcpd does not export", file, m)
			}
			seen[base] = true
		}
		if strings.HasSuffix(file, ".md") {
			for n := range names {
				if !seen[n] {
					t.Errorf("%s does not document %s", file, n)
				}
			}
		}
	}
}
