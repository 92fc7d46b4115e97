package transport

import (
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	bolt "go.etcd.io/bbolt"

	"github.com/mcpd/mcpd/cluster"
	"github.com/mcpd/mcpd/queue"
	"github.com/mcpd/mcpd/schedule"
	"github.com/mcpd/mcpd/task"
)

// Metrics come in two kinds (docs/ops/metrics.md):
//
//   - counters of what this node served: the commands its clients
//     submitted and how long they took to commit, the deliveries it handed
//     to consumers connected to it, its authentication failures. Sum them
//     over the nodes for the cluster's figure.
//   - figures read from the node's applied state at scrape time: queue
//     depths, task states, schedule firings. Every node applies the same
//     log, so every node reports the same values (a follower's may lag by
//     the entries it has not applied yet): take one node's, or max().
//
// Raft's own timings come from hashicorp/raft's metrics, bridged by
// raftSink (metrics_raft.go).

// Transport label values.
const (
	transportWebSocket = "websocket"
	transportRedis     = "redis"
)

// commitBuckets spans a fast local commit (half a millisecond) to a slow
// one during an election (16 s).
var commitBuckets = prometheus.ExponentialBuckets(0.0005, 2, 16)

// nodeStats are the counters one node's transports keep.
type nodeStats struct {
	commands     *prometheus.CounterVec
	latency      *prometheus.HistogramVec
	deliveries   prometheus.Counter
	redeliveries prometheus.Counter
	authFailures *prometheus.CounterVec

	resp atomic.Pointer[RESPServer] // the node's Redis face, for its connections
}

func newNodeStats() *nodeStats {
	return &nodeStats{
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mcpd_commands_total",
			Help: "Commands this node's clients submitted, by transport, operation and result (ok: committed by a quorum; error: refused or failed). Counted on the node the client is connected to; sum over nodes for the cluster.",
		}, []string{"transport", "op", "result"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mcpd_commit_latency_seconds",
			Help:    "Time from submitting a client's command on this node to its commit by a quorum (the moment its reply can be sent), by transport and operation. Committed commands only.",
			Buckets: commitBuckets,
		}, []string{"transport", "op"}),
		deliveries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mcpd_deliveries_total",
			Help: "Queue messages this node handed to consumers connected to it (WebSocket consumers; Redis XREADGROUP reads count as commands). Each delivery is counted on exactly one node: sum over nodes for the cluster.",
		}),
		redeliveries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mcpd_redeliveries_total",
			Help: "The deliveries of mcpd_deliveries_total that were not a message's first attempt (after a nack, a lease expiry or a consumer's disconnection).",
		}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mcpd_auth_failures_total",
			Help: "Failed authentications on this node, by transport and error code.",
		}, []string{"transport", "code"}),
	}
}

func (st *nodeStats) collectors() []prometheus.Collector {
	return []prometheus.Collector{st.commands, st.latency, st.deliveries, st.redeliveries, st.authFailures}
}

// statsByNode holds each node's counters; a process normally runs one
// node, tests several.
var statsByNode sync.Map // *cluster.Node -> *nodeStats

func statsOf(n *cluster.Node) *nodeStats {
	if st, ok := statsByNode.Load(n); ok {
		return st.(*nodeStats)
	}
	st, _ := statsByNode.LoadOrStore(n, newNodeStats())
	return st.(*nodeStats)
}

// observeSubmit counts a submitted command and, once committed, its
// latency. op is the protocol operation or the Redis command.
func observeSubmit(n *cluster.Node, transport, op string, start time.Time, err error) {
	st := statsOf(n)
	if err != nil {
		st.commands.WithLabelValues(transport, op, "error").Inc()
		return
	}
	st.commands.WithLabelValues(transport, op, "ok").Inc()
	st.latency.WithLabelValues(transport, op).Observe(time.Since(start).Seconds())
}

// countDelivery counts a delivery handed to a local consumer.
func countDelivery(n *cluster.Node, d *queue.Delivery) {
	st := statsOf(n)
	st.deliveries.Inc()
	if d.Attempt > 1 {
		st.redeliveries.Inc()
	}
}

// countAuthFailure counts an auth.fail event of a transport.
func countAuthFailure(n *cluster.Node, transport, code string) {
	if code == "" {
		code = "unknown"
	}
	statsOf(n).authFailures.WithLabelValues(transport, code).Inc()
}

// redisOp is the metric label of a Redis command: its lowercased name, or
// "other" for anything that does not look like one.
func redisOp(args [][]byte) string {
	if len(args) == 0 || len(args[0]) == 0 || len(args[0]) > 32 {
		return "other"
	}
	op := strings.ToLower(string(args[0]))
	for _, r := range op {
		if (r < 'a' || r > 'z') && r != '_' && r != '.' && r != '|' {
			return "other"
		}
	}
	return op
}

// noteRESPServer tells the node's metrics about its Redis face.
func noteRESPServer(n *cluster.Node, s *RESPServer) { statsOf(n).resp.Store(s) }

func (s *RESPServer) connCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// NewMetricsHandler serves /metrics for node in the Prometheus text
// format: the node's counters, its applied state read at scrape time, its
// Raft figures, and the Go runtime's and process's metrics. ws may be nil
// (no WebSocket connections are reported then).
func NewMetricsHandler(node *cluster.Node, ws *Server) http.Handler {
	reg := NewMetricsRegistry(node, ws)
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	return mux
}

// NewMetricsRegistry is the registry NewMetricsHandler serves.
func NewMetricsRegistry(node *cluster.Node, ws *Server) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(statsOf(node).collectors()...)
	reg.MustRegister(&stateCollector{node: node, ws: ws})
	reg.MustRegister(raftMetrics())
	return reg
}

var (
	descQueueMessages = prometheus.NewDesc("mcpd_queue_messages",
		"Messages in a queue by state: ready (can be delivered now), inflight (leased to a consumer), delayed (not due yet). From this node's applied state.",
		[]string{"queue", "state"}, nil)
	descQueueConsumers = prometheus.NewDesc("mcpd_queue_consumers",
		"Consumers registered on a queue, on every node. From this node's applied state.",
		[]string{"queue"}, nil)
	descQueueEnqueued = prometheus.NewDesc("mcpd_queue_enqueued_total",
		"Messages a queue has been given since it was created (cluster-wide: every node reports the same count once it has applied the same log).",
		[]string{"queue"}, nil)
	descQueueDead = prometheus.NewDesc("mcpd_queue_dead_lettered_total",
		"Messages a queue has moved to its dead-letter queue since it was created (cluster-wide, like mcpd_queue_enqueued_total).",
		[]string{"queue"}, nil)
	descTasks = prometheus.NewDesc("mcpd_tasks",
		"Stored tasks by state (waiting, held, ready, assigned, succeeded, failed, cancelled). From this node's applied state.",
		[]string{"state"}, nil)
	descTasksPruned = prometheus.NewDesc("mcpd_tasks_pruned_total",
		"Ended tasks task retention has removed since the store began (cluster-wide, from this node's applied state).",
		nil, nil)
	descTaskTreesPruned = prometheus.NewDesc("mcpd_task_trees_pruned_total",
		"Ended task trees (a root graph and what was delegated under it) task retention has removed (cluster-wide).",
		nil, nil)
	descScheduleFired = prometheus.NewDesc("mcpd_schedule_firings_total",
		"Times a schedule fired since it was created (cluster-wide, from this node's applied state).",
		[]string{"schedule"}, nil)
	descScheduleSkipped = prometheus.NewDesc("mcpd_schedule_skipped_total",
		"Ticks a schedule did not fire since it was created (missed while the cluster had no leader or was down, under its misfire policy).",
		[]string{"schedule"}, nil)
	descConnections = prometheus.NewDesc("mcpd_connections",
		"Client connections open on this node, by transport.",
		[]string{"transport"}, nil)
	descStateReadErrors = prometheus.NewDesc("mcpd_metrics_state_read_ok",
		"1 when this scrape could read the node's applied state, 0 when it could not (the node is rejoining its cluster, or state.db failed to read).",
		nil, nil)
	descRaftIsLeader = prometheus.NewDesc("mcpd_raft_is_leader",
		"1 when this node is the Raft leader, else 0.", nil, nil)
	descRaftTerm = prometheus.NewDesc("mcpd_raft_term",
		"This node's current Raft term; it grows with every election.", nil, nil)
	descRaftCommitIndex = prometheus.NewDesc("mcpd_raft_commit_index",
		"The highest Raft log index this node knows is committed.", nil, nil)
	descRaftAppliedIndex = prometheus.NewDesc("mcpd_raft_applied_index",
		"The highest Raft log index applied to this node's state.db.", nil, nil)
	descRaftLastContact = prometheus.NewDesc("mcpd_raft_last_contact_seconds",
		"Seconds since this follower last heard from the leader (0 on the leader; absent before any contact).", nil, nil)
)

// stateCollector reports the node's applied state at scrape time: no
// bookkeeping besides the state itself, so it is always consistent with it.
type stateCollector struct {
	node *cluster.Node
	ws   *Server
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descQueueMessages, descQueueConsumers, descQueueEnqueued, descQueueDead,
		descTasks, descTasksPruned, descTaskTreesPruned, descScheduleFired, descScheduleSkipped, descConnections, descStateReadErrors,
		descRaftIsLeader, descRaftTerm, descRaftCommitIndex, descRaftAppliedIndex, descRaftLastContact} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	// Read everything first and send after: the channel must not be fed
	// while the bbolt read transaction is open for long.
	var out []func()
	err := c.node.Read(func(tx *bolt.Tx) error {
		out = out[:0]
		err := queue.EachStats(tx, func(name string, s queue.Stats) error {
			out = append(out, func() {
				gauge(descQueueMessages, float64(s.Ready), name, "ready")
				gauge(descQueueMessages, float64(s.Inflight), name, "inflight")
				gauge(descQueueMessages, float64(s.Delayed), name, "delayed")
				gauge(descQueueConsumers, float64(s.Consumers), name)
				counter(descQueueEnqueued, float64(s.Enqueued), name)
				counter(descQueueDead, float64(s.Dead), name)
			})
			return nil
		})
		if err != nil {
			return err
		}
		states, err := task.CountStates(tx)
		if err != nil {
			return err
		}
		out = append(out, func() {
			for _, st := range []string{task.StateWaiting, task.StateHeld, task.StateReady, task.StateAssigned,
				task.StateSucceeded, task.StateFailed, task.StateCancelled} {
				gauge(descTasks, float64(states[st]), st)
			}
		})
		trees, pruned := task.Pruned(tx)
		out = append(out, func() {
			counter(descTasksPruned, float64(pruned))
			counter(descTaskTreesPruned, float64(trees))
		})
		return schedule.List(tx, func(s *schedule.Schedule) error {
			name, fired, skipped := s.Name, s.Fired, s.Skipped
			out = append(out, func() {
				counter(descScheduleFired, float64(fired), name)
				counter(descScheduleSkipped, float64(skipped), name)
			})
			return nil
		})
	})
	if err != nil {
		gauge(descStateReadErrors, 0)
	} else {
		gauge(descStateReadErrors, 1)
		for _, f := range out {
			f()
		}
	}

	if c.ws != nil {
		gauge(descConnections, float64(c.ws.Stats().Conns), transportWebSocket)
	}
	if r := statsOf(c.node).resp.Load(); r != nil {
		gauge(descConnections, float64(r.connCount()), transportRedis)
	}

	r := c.node.Raft()
	if r == nil {
		return
	}
	leader := c.node.IsLeader()
	if leader {
		gauge(descRaftIsLeader, 1)
		gauge(descRaftLastContact, 0)
	} else {
		gauge(descRaftIsLeader, 0)
		if last := r.LastContact(); !last.IsZero() {
			gauge(descRaftLastContact, time.Since(last).Seconds())
		}
	}
	gauge(descRaftTerm, float64(r.CurrentTerm()))
	gauge(descRaftCommitIndex, float64(r.CommitIndex()))
	gauge(descRaftAppliedIndex, float64(c.node.FSM().AppliedIndex()))
}
