package transport_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mcpd/mcpd/client"
	"github.com/mcpd/mcpd/internal/testcluster"
	"github.com/mcpd/mcpd/transport"
)

// Resource bounds: the connection limit, the per-connection send queue,
// max_frame through the client library and max_len through it.

// await polls cond until it holds or waitTime passes.
func await(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTime)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// dialRefused dials url and requires the HTTP 503 refusal of a node at
// its connection limit.
func dialRefused(t *testing.T, c *testcluster.Cluster, url string) {
	t.Helper()
	d := websocket.Dialer{TLSClientConfig: c.TLS.ClientTLS(), Subprotocols: []string{"mcp.v1"}, HandshakeTimeout: waitTime}
	ws, resp, err := d.Dial(url, nil)
	if err == nil {
		ws.Close()
		t.Fatal("a connection beyond max_conns was accepted")
	}
	if resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("dial beyond max_conns: %v, response %+v; want HTTP 503", err, resp)
	}
	if resp.Header.Get("Retry-After") == "" {
		t.Fatalf("503 without Retry-After: %v", resp.Header)
	}
	body, _ := io.ReadAll(resp.Body)
	var f struct{ Op, Code, Msg string }
	if err := json.Unmarshal(body, &f); err != nil || f.Op != "err" || f.Code != "unavailable" || !strings.Contains(f.Msg, "connection limit") {
		t.Fatalf("503 body %q, want an err frame with code unavailable naming the connection limit", body)
	}
}

func Test_Limits_MaxConnsRefusesAndReleases(t *testing.T) {
	const max = 3
	c := startCluster(t, 1, transport.Options{MaxConns: max})
	nd := c.Nodes[0]
	url := nd.URL
	conns := func() int64 { return nd.WS.Stats().Conns }
	// Unauthenticated connections count too: every one holds a socket.
	open := []*rawConn{login(t, c, url, "a0"), login(t, c, url, "a1"), dialRaw(t, c, url)}
	if n := conns(); n != max {
		t.Fatalf("connections %d, want %d", n, max)
	}
	dialRefused(t, c, url)

	// The client library reports the refusal as a protocol error.
	ctx, cancel := context.WithTimeout(context.Background(), waitTime)
	defer cancel()
	_, err := client.Dial(ctx, client.Options{URLs: []string{url}, Agent: "late", TLSConfig: c.TLS.ClientTLS()})
	if !client.IsCode(err, "unavailable") || !strings.Contains(err.Error(), "connection limit") {
		t.Fatalf("client dial beyond max_conns: %v, want unavailable naming the connection limit", err)
	}

	// The refusals changed nothing for the open connections.
	open[0].ping()
	open[1].ping()
	if n, st := conns(), nd.WS.Stats(); n != max || st.Refused != 2 {
		t.Fatalf("after refusals: %+v, want %d connections and 2 refused", st, max)
	}

	// Closing one makes room for exactly one.
	open[2].closeNow()
	await(t, "a closed connection is released", func() bool { return conns() == max-1 })
	open[2] = login(t, c, url, "a2")
	dialRefused(t, c, url)
}

// Every way a connection ends gives its slot back.
func Test_Limits_MaxConnsEveryClosePath(t *testing.T) {
	c := startCluster(t, 1, transport.Options{MaxConns: 2, MaxFrame: 4096, AuthTimeout: 300 * time.Millisecond})
	nd := c.Nodes[0]
	url := nd.URL
	keep := login(t, c, url, "keeper")
	// Each path opens the second connection (so a third is refused) and
	// ends it.
	paths := []struct {
		name string
		run  func()
	}{
		{"abrupt client close", func() {
			rc := login(t, c, url, "visitor")
			dialRefused(t, c, url)
			rc.closeNow()
		}},
		{"client close frame", func() {
			rc := login(t, c, url, "visitor")
			dialRefused(t, c, url)
			msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye")
			if err := rc.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(waitTime)); err != nil {
				t.Fatal(err)
			}
			if _, err := rc.readWithin(waitTime); err == nil {
				t.Fatal("frame after close")
			}
		}},
		{"server close after too_large", func() {
			rc := login(t, c, url, "visitor")
			dialRefused(t, c, url)
			rc.sendText(bigEnqueue(t, qname(t, "q"), 5000))
			wantTooLarge(t, rc)
		}},
		{"server close at the auth timeout", func() {
			rc := dialRaw(t, c, url)
			if code := closeCode(t, rc, waitTime); code != transport.CloseAuthTimeout {
				t.Fatalf("close code %d, want %d", code, transport.CloseAuthTimeout)
			}
		}},
		// The slow-consumer close is checked in its own test below.
	}
	for _, p := range paths {
		p.run()
		await(t, p.name+" releases its slot", func() bool { return nd.WS.Stats().Conns == 1 })
	}
	keep.ping()
	if st := nd.WS.Stats(); st.Conns != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// A consumer that never reads while the server pushes is closed with 4008
// and its reason; the server holds a bounded queue for it meanwhile; the
// messages leased to it are delivered again to another consumer.
func Test_Limits_SlowConsumerClosedWith4008(t *testing.T) {
	const (
		sendQueue      = 64
		sendQueueBytes = 128 << 10
		prefetch       = 20
	)
	c := startCluster(t, 1, transport.Options{SendQueue: sendQueue, SendQueueBytes: sendQueueBytes, CloseGrace: time.Minute})
	nd := c.Nodes[0]
	q := qname(t, "jobs")
	slow := login(t, c, nd.URL, "slow")
	slow.consume(q, fmt.Sprintf(`"prefetch":%d`, prefetch))
	subscribe(t, slow, "flood.>")
	// From here on the slow client reads nothing.

	prod := c.Dial("producer")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sent := map[uint64]string{}
	for i := range prefetch {
		body := fmt.Sprintf("job-%d", i)
		res, err := prod.Enqueue(ctx, q, body)
		if err != nil {
			t.Fatal(err)
		}
		sent[res.Seq] = body
	}

	// Flood the subscription until the server drops it: the socket
	// buffers fill, then the send queue reaches its bound.
	pad := strings.Repeat("x", 16<<10)
	var gone atomic.Bool
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !gone.Load(); i++ {
				n, err := prod.Publish(ctx, "flood.t", map[string]any{"w": w, "i": i, "pad": pad})
				if err != nil {
					t.Errorf("publish: %v", err)
					return
				}
				if n == 0 {
					gone.Store(true)
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}

	// Nothing acknowledged to the producer is lost: the leases of the
	// closed connection are released and another consumer gets every
	// message, as a second attempt.
	worker := c.Dial("worker")
	k, err := worker.Consume(ctx, q, client.ConsumeOptions{Prefetch: prefetch})
	if err != nil {
		t.Fatal(err)
	}
	got := map[uint64]bool{}
	for len(got) < len(sent) {
		d, err := k.Next(ctx)
		if err != nil {
			t.Fatalf("worker got %d of %d: %v", len(got), len(sent), err)
		}
		var e struct{ Body string }
		if err := json.Unmarshal(d.Msg, &e); err != nil || e.Body != sent[d.Seq] {
			t.Fatalf("redelivery of seq %d: %s, want body %q", d.Seq, d.Msg, sent[d.Seq])
		}
		if d.Attempt != 2 {
			t.Fatalf("seq %d attempt %d, want 2 (first leased to the slow consumer)", d.Seq, d.Attempt)
		}
		got[d.Seq] = true
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}

	// The slow client, reading at last, finds what the socket held, then
	// the close frame with its code and reason.
	var ce *websocket.CloseError
	for {
		_, err := slow.readWithin(waitTime)
		if err == nil {
			continue
		}
		if !errors.As(err, &ce) {
			t.Fatalf("slow client: %v, want a close frame", err)
		}
		break
	}
	if ce.Code != transport.CloseSlowConsumer || !strings.HasPrefix(ce.Text, "slow consumer") {
		t.Fatalf("close %d %q, want %d \"slow consumer: ...\"", ce.Code, ce.Text, transport.CloseSlowConsumer)
	}

	// The server held at most the queue's bounds for it, and counted it.
	await(t, "the slow connection is released", func() bool { return nd.WS.Stats().Conns == 2 })
	frames, bytes := transport.SendQueuePeak(nd.WS)
	if frames > sendQueue || bytes > sendQueueBytes {
		t.Fatalf("send queue peaked at %d frames, %d bytes; bound %d frames, %d bytes", frames, bytes, sendQueue, sendQueueBytes)
	}
	if frames == 0 {
		t.Fatal("the slow connection's send queue never held anything")
	}
	if st := nd.WS.Stats(); st.SlowClosed != 1 {
		t.Fatalf("stats %+v, want one slow-consumer close", st)
	}
}

// An envelope too large for max_frame is refused by the client library
// before it is sent, and changes nothing; the connection stays usable.
func Test_Limits_OversizedEnvelopeThroughClient(t *testing.T) {
	c := startCluster(t, 1, transport.Options{MaxFrame: 4096})
	cl := c.Dial("alice")
	ctx, cancel := context.WithTimeout(context.Background(), waitTime)
	defer cancel()
	q := qname(t, "q")
	_, err := cl.Enqueue(ctx, q, strings.Repeat("x", 5000))
	if !client.IsCode(err, "too_large") {
		t.Fatalf("oversized enqueue: %v, want too_large", err)
	}
	if _, err := cl.Publish(ctx, "big.t", strings.Repeat("x", 5000)); !client.IsCode(err, "too_large") {
		t.Fatalf("oversized publish: %v, want too_large", err)
	}
	if res, err := cl.Enqueue(ctx, q, "small"); err != nil || res.Seq != 1 {
		t.Fatalf("enqueue after too_large: %+v %v, want seq 1", res, err)
	}
}

// max_len is reachable through the client library: an enqueue beyond it
// fails with code full at once (it is not retried) and stores nothing.
func Test_Limits_MaxLenThroughClient(t *testing.T) {
	c, rc := one(t, "alice")
	q := qname(t, "q")
	rc.ok("queue.declare", fmt.Sprintf(`"queue":%q,"max_len":2`, q))
	cl := c.Dial("alice")
	ctx, cancel := context.WithTimeout(context.Background(), waitTime)
	defer cancel()
	for i := range 2 {
		if _, err := cl.Enqueue(ctx, q, i); err != nil {
			t.Fatal(err)
		}
	}
	_, err := cl.Enqueue(ctx, q, 3)
	if !client.IsCode(err, "full") {
		t.Fatalf("enqueue beyond max_len: %v, want full", err)
	}
	if got := rc.info(q); got != [5]int64{2, 0, 0, 0, 0} {
		t.Fatalf("info %v", got)
	}
}

// /healthz reports the process figures and the connections.
func Test_Health_ProcessFigures(t *testing.T) {
	c := startCluster(t, 1, transport.Options{MaxConns: 50})
	nd := c.Nodes[0]
	login(t, c, nd.URL, "a")
	login(t, c, nd.URL, "b")
	srv := httptest.NewServer(nd.WS.HealthHandler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Status     string
		RSSBytes   int64 `json:"rss_bytes"`
		Goroutines int
		Conns      int64 `json:"connections"`
		MaxConns   int   `json:"max_conns"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	if body.Status != "up" || (runtime.GOOS == "linux" && body.RSSBytes <= 0) || body.Goroutines <= 0 || body.Conns != 2 || body.MaxConns != 50 {
		t.Fatalf("/healthz %+v", body)
	}
}
