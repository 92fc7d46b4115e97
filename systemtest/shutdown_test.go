package systemtest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mcpd/mcpd/client"
)

// rawConn is a bare protocol connection, to see exactly which frames and
// which close code the server sends.
type rawConn struct {
	t  *testing.T
	ws *websocket.Conn
}

// dialRaw connects to url, trusting caFile, and authenticates as agent
// with alg "none".
func dialRaw(t *testing.T, url, caFile, agent string) *rawConn {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("%s holds no certificate", caFile)
	}
	d := websocket.Dialer{
		TLSClientConfig:  &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		Subprotocols:     []string{"mcp.v1"},
		HandshakeTimeout: 5 * time.Second,
	}
	ws, _, err := d.Dial(url, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	t.Cleanup(func() { ws.Close() })
	c := &rawConn{t: t, ws: ws}
	if hello := c.read(); hello["op"] != "hello" {
		t.Fatalf("first frame %v, want hello", hello)
	}
	c.write(map[string]any{"op": "auth", "rid": 1, "agent": agent, "alg": "none"})
	if ok := c.read(); ok["op"] != "ok" || ok["rid"] != float64(1) {
		t.Fatalf("auth answered %v", ok)
	}
	return c
}

func (c *rawConn) write(v map[string]any) {
	c.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		c.t.Fatal(err)
	}
	c.ws.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if err := c.ws.WriteMessage(websocket.TextMessage, b); err != nil {
		c.t.Fatalf("write %s: %v", b, err)
	}
}

// next reads one frame within 10s.
func (c *rawConn) next() (map[string]any, error) {
	c.ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, b, err := c.ws.ReadMessage()
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("frame %s: %w", b, err)
	}
	return m, nil
}

func (c *rawConn) read() map[string]any {
	c.t.Helper()
	m, err := c.next()
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return m
}

// devNode is a single `mcpd serve --dev` process.
func devNode(t *testing.T) (p *proc, dataDir, health, url string) {
	t.Helper()
	bin := mcpdBinary(t)
	dir := t.TempDir()
	ports := freePorts(t, 3)
	dataDir = filepath.Join(dir, "data")
	p = &proc{
		name: "dev",
		bin:  bin,
		args: []string{"serve", "--dev",
			"--data-dir", dataDir,
			"--redis-port", "0",
			"--metrics-port", "0",
			"--port", strconv.Itoa(ports[0]),
			"--health-port", strconv.Itoa(ports[1]),
			"--raft-port", strconv.Itoa(ports[2]), "--admin-port", "0",
		},
		logPath: filepath.Join(dir, "dev.log"),
	}
	manage(t, p)
	health = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1]))
	url = fmt.Sprintf("wss://%s/v1", net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])))
	return p, dataDir, health, url
}

func Test_System_GracefulShutdown(t *testing.T) {
	const (
		queue    = "system.shutdown"
		messages = 100
		prefetch = 10
	)
	p, dataDir, health, url := devNode(t)
	caFile := filepath.Join(dataDir, "tls", "ca.pem")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	p.start(t)
	waitReady(t, health, 20*time.Second)
	cl, err := client.Dial(ctx, client.Options{URLs: []string{url}, Agent: "producer", CAFile: caFile})
	if err != nil {
		t.Fatal(err)
	}
	for i := range messages {
		if _, err := cl.Enqueue(ctx, queue, map[string]int{"n": i}); err != nil {
			t.Fatalf("enqueue %d: %v", i, err)
		}
	}
	cl.Close()

	// A raw consumer holding leases when the signal comes.
	rc := dialRaw(t, url, caFile, "consumer")
	rc.write(map[string]any{"op": "consume", "rid": 2, "queue": queue, "prefetch": prefetch})
	delivered := 0
	for delivered < prefetch {
		m := rc.read()
		switch m["op"] {
		case "ok":
		case "deliver":
			delivered++
		default:
			t.Fatalf("unexpected frame while consuming: %v", m)
		}
	}

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	signalled := time.Now()
	var closeErr *websocket.CloseError
	for {
		m, err := rc.next()
		if err == nil {
			if m["op"] == "deliver" {
				t.Errorf("delivery after SIGTERM with prefetch full: %v", m)
			}
			continue
		}
		if !errors.As(err, &closeErr) {
			t.Fatalf("connection ended without a close frame: %v", err)
		}
		break
	}
	if closeErr.Code != websocket.CloseGoingAway {
		t.Errorf("close code %d (%q), want %d", closeErr.Code, closeErr.Text, websocket.CloseGoingAway)
	}
	st, exited := p.wait(15 * time.Second)
	if !exited {
		t.Fatalf("process still running %v after SIGTERM", time.Since(signalled).Round(time.Millisecond))
	}
	if st.ExitCode() != 0 {
		t.Errorf("exit status %v after SIGTERM, want 0", st)
	}
	t.Logf("close %d %q; exited (%v) %v after SIGTERM", closeErr.Code, closeErr.Text, st, time.Since(signalled).Round(time.Millisecond))

	// Restart on the same data: every message is still there, and the
	// leases of the dead connection are gone (well before their 30s lease).
	p.start(t)
	waitReady(t, health, 20*time.Second)
	cl, err = client.Dial(ctx, client.Options{URLs: []string{url}, Agent: "observer", CAFile: caFile})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var s client.QueueStats
	waitFor(t, 10*time.Second, "all messages ready after the restart", func() error {
		if s, err = cl.QueueInfo(ctx, queue); err != nil {
			return err
		}
		if s.Ready != messages || s.Inflight != 0 || s.Delayed != 0 {
			return fmt.Errorf("queue.info %+v", s)
		}
		return nil
	})
	t.Logf("after restart: queue.info %+v", s)
}
