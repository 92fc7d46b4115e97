package systemtest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mcpd/mcpd/client"
)

// Test_System_Metrics: a dev node serves Prometheus /metrics on
// --metrics-port, with the queue it was given, its commands and raft's
// own metrics.
func Test_System_Metrics(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an mcpd process")
	}
	bin := mcpdBinary(t)
	dir := t.TempDir()
	ports := freePorts(t, 4)
	dataDir := filepath.Join(dir, "data")
	p := &proc{
		name: "dev",
		bin:  bin,
		args: []string{"serve", "--dev",
			"--data-dir", dataDir,
			"--redis-port", "0",
			"--port", strconv.Itoa(ports[0]),
			"--health-port", strconv.Itoa(ports[1]),
			"--raft-port", strconv.Itoa(ports[2]), "--admin-port", "0",
			"--metrics-port", strconv.Itoa(ports[3]),
		},
		logPath: filepath.Join(dir, "dev.log"),
	}
	manage(t, p)
	p.start(t)
	waitReady(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1])), 20*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	url := fmt.Sprintf("wss://%s/v1", net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])))
	cl, err := client.Dial(ctx, client.Options{URLs: []string{url}, Agent: "producer", CAFile: filepath.Join(dataDir, "tls", "ca.pem")})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for range 3 {
		if _, err := cl.Enqueue(ctx, "system.metrics", map[string]string{"k": "v"}); err != nil {
			t.Fatal(err)
		}
	}

	metrics := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[3])) + "/metrics"
	resp, err := http.Get(metrics)
	if err != nil {
		t.Fatalf("GET %s: %v", metrics, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", metrics, resp.StatusCode, err)
	}
	text := string(body)
	for _, want := range []string{
		`mcpd_queue_messages{queue="system.metrics",state="ready"} 3`,
		`mcpd_queue_enqueued_total{queue="system.metrics"} 3`,
		`mcpd_commands_total{op="enqueue",result="ok",transport="websocket"} 3`,
		`mcpd_commit_latency_seconds_count{op="enqueue",transport="websocket"} 3`,
		`mcpd_connections{transport="websocket"} 1`,
		`mcpd_raft_is_leader 1`,
		`mcpd_raft_state_changes_total{state="leader"} 1`,
		`mcpd_raft_commit_seconds_count `,
		`mcpd_raft_fsm_apply_seconds_count `,
		`process_resident_memory_bytes `,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", text)
	}
}
