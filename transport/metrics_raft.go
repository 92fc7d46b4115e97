package transport

import (
	"strings"
	"sync"
	"time"

	gometrics "github.com/hashicorp/go-metrics/compat"
	"github.com/prometheus/client_golang/prometheus"
)

// raftSink receives hashicorp/raft's own metrics (raft reports them to
// the process-wide go-metrics instance) and keeps the ones an operator of
// mcpd watches as Prometheus metrics. The go-metrics instance is global, so
// these are per process: with one node per process, per node.
type raftSink struct {
	commit     prometheus.Histogram
	apply      prometheus.Histogram
	dispatch   prometheus.Histogram
	states     *prometheus.CounterVec
	hbTimeouts prometheus.Counter
	snapshots  prometheus.Counter
}

// raftBuckets spans a sub-millisecond step to a slow disk's seconds.
var raftBuckets = prometheus.ExponentialBuckets(0.0001, 2, 18)

func newRaftSink() *raftSink {
	return &raftSink{
		commit: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mcpd_raft_commit_seconds",
			Help:    "On the leader, time from dispatching a Raft log entry to its commit by a quorum (hashicorp/raft raft.commitTime).",
			Buckets: raftBuckets,
		}),
		apply: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mcpd_raft_fsm_apply_seconds",
			Help:    "Time this node's FSM took to apply one batch of committed entries to state.db, fsync included (hashicorp/raft raft.fsm.applyBatch and raft.fsm.apply).",
			Buckets: raftBuckets,
		}),
		dispatch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mcpd_raft_leader_dispatch_seconds",
			Help:    "On the leader, time to write a batch of new entries to its own Raft log, fsync included (hashicorp/raft raft.leader.dispatchLog).",
			Buckets: raftBuckets,
		}),
		states: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mcpd_raft_state_changes_total",
			Help: "Times this node entered a Raft state (leader, follower, candidate). state=\"leader\" counts the leaderships this node won; its sum over the nodes counts the cluster's leader changes.",
		}, []string{"state"}),
		hbTimeouts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mcpd_raft_heartbeat_timeouts_total",
			Help: "Times this follower heard from no leader within the heartbeat timeout and started an election.",
		}),
		snapshots: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mcpd_raft_snapshot_restores_total",
			Help: "Snapshots this node restored into its FSM (installed from the leader, or at start).",
		}),
	}
}

func (s *raftSink) Describe(ch chan<- *prometheus.Desc) {
	s.commit.Describe(ch)
	s.apply.Describe(ch)
	s.dispatch.Describe(ch)
	s.states.Describe(ch)
	s.hbTimeouts.Describe(ch)
	s.snapshots.Describe(ch)
}

func (s *raftSink) Collect(ch chan<- prometheus.Metric) {
	s.commit.Collect(ch)
	s.apply.Collect(ch)
	s.dispatch.Collect(ch)
	s.states.Collect(ch)
	s.hbTimeouts.Collect(ch)
	s.snapshots.Collect(ch)
}

// The go-metrics sink interface. Timers arrive in milliseconds (the
// configured granularity).

func (s *raftSink) AddSample(key []string, val float32) {
	seconds := float64(val) / 1000
	switch strings.Join(key, ".") {
	case "raft.commitTime":
		s.commit.Observe(seconds)
	case "raft.fsm.applyBatch", "raft.fsm.apply":
		s.apply.Observe(seconds)
	case "raft.leader.dispatchLog":
		s.dispatch.Observe(seconds)
	}
}

func (s *raftSink) AddSampleWithLabels(key []string, val float32, _ []gometrics.Label) {
	s.AddSample(key, val)
}

func (s *raftSink) IncrCounter(key []string, val float32) {
	switch k := strings.Join(key, "."); k {
	case "raft.state.leader", "raft.state.follower", "raft.state.candidate":
		s.states.WithLabelValues(strings.TrimPrefix(k, "raft.state.")).Add(float64(val))
	case "raft.transition.heartbeat_timeout":
		s.hbTimeouts.Add(float64(val))
	case "raft.restore":
		s.snapshots.Add(float64(val))
	}
}

func (s *raftSink) IncrCounterWithLabels(key []string, val float32, _ []gometrics.Label) {
	s.IncrCounter(key, val)
}

func (s *raftSink) SetGauge([]string, float32)                              {}
func (s *raftSink) SetGaugeWithLabels([]string, float32, []gometrics.Label) {}
func (s *raftSink) EmitKey([]string, float32)                               {}

var (
	raftSinkOnce sync.Once
	theRaftSink  *raftSink
)

// raftMetrics installs the raft sink as the process's go-metrics instance
// (once) and returns it as a Prometheus collector.
func raftMetrics() *raftSink {
	raftSinkOnce.Do(func() {
		theRaftSink = newRaftSink()
		conf := gometrics.DefaultConfig("")
		conf.HostName = ""
		conf.EnableHostname = false
		conf.EnableHostnameLabel = false
		conf.EnableRuntimeMetrics = false
		conf.TimerGranularity = time.Millisecond
		_, _ = gometrics.NewGlobal(conf, theRaftSink)
	})
	return theRaftSink
}

// InstallRaftMetrics starts collecting hashicorp/raft's metrics. Raft
// reports them from the moment a node starts, so call this before starting
// one; NewMetricsHandler calls it too.
func InstallRaftMetrics() { raftMetrics() }
