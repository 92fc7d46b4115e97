package transport_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mcpd/mcpd/internal/testcluster"
	"github.com/mcpd/mcpd/transport"
)

func closeCode(t *testing.T, rc *rawConn, within time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if _, err := rc.readWithin(time.Until(deadline)); err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				return ce.Code
			}
			t.Fatalf("read: %v (want a close frame)", err)
		}
	}
	t.Fatalf("no close within %v", within)
	return 0
}

func Test_Keepalive_NoAuthClosesWith4001(t *testing.T) {
	c := startCluster(t, 1, transport.Options{AuthTimeout: 300 * time.Millisecond})
	rc := dialRaw(t, c, c.Nodes[0].URL)
	if code := closeCode(t, rc, 5*time.Second); code != transport.CloseAuthTimeout {
		t.Fatalf("close code %d, want %d", code, transport.CloseAuthTimeout)
	}
}

func Test_Keepalive_SilentClientClosesWith4002(t *testing.T) {
	c := startCluster(t, 1, transport.Options{PingInterval: 100 * time.Millisecond, IdleTimeout: 500 * time.Millisecond})
	rc := login(t, c, c.Nodes[0].URL, "quiet")
	// Swallow the server's pings instead of answering them.
	rc.ws.SetPingHandler(func(string) error { return nil })
	if code := closeCode(t, rc, 5*time.Second); code != transport.CloseIdle {
		t.Fatalf("close code %d, want %d", code, transport.CloseIdle)
	}
}

// keepaliveIdle is the idle timeout of the tests that a connection kept
// alive outlives. The client and the server share this process: a stall
// of the whole process (a starved scheduler) longer than the idle timeout
// is silence on the wire in fact, and the server rightly closes. The
// timeout is therefore well above any stall a loaded test machine has,
// and the tests wait three of them.
const keepaliveIdle = 1500 * time.Millisecond

func Test_Keepalive_PongsKeepTheConnection(t *testing.T) {
	c := startCluster(t, 1, transport.Options{PingInterval: 100 * time.Millisecond, IdleTimeout: keepaliveIdle})
	rc := login(t, c, c.Nodes[0].URL, "lively")
	// Reading answers pings; three idle timeouts pass without a close.
	end := time.Now().Add(3 * keepaliveIdle)
	for time.Now().Before(end) {
		if _, err := rc.readWithin(time.Until(end)); err != nil {
			var ne interface{ Timeout() bool }
			if errors.As(err, &ne) && ne.Timeout() {
				break
			}
			t.Fatalf("connection ended: %v", err)
		}
	}
	// A read deadline poisons a gorilla connection; dial again to check
	// the server still serves this agent.
	rc2 := login(t, c, c.Nodes[0].URL, "lively")
	if f := rc2.ping(); f.op() != "ok" {
		t.Fatalf("ping: %s", f)
	}
}

// Every node reports its role and the leader; the leader can change
// at any time (under load the test cluster's 300 ms timeouts let a
// stalled node lose its lease), so each answer is awaited until it names
// the node that leads then, with no leader named for a moment during an
// election.
func Test_Health_ReadyzReportsRoleAndLeader(t *testing.T) {
	c := startCluster(t, 3, transport.Options{})
	c.WaitLeader()
	c.WaitApplied()
	for _, nd := range c.Nodes {
		srv := httptest.NewServer(transport.HealthHandler(nd.Node))
		for _, path := range []string{"/healthz", "/readyz"} {
			var last string
			testcluster.WaitFor(t, 20*time.Second, func() bool {
				resp, err := http.Get(srv.URL + path)
				if err != nil {
					t.Fatal(err)
				}
				var body struct {
					Node, Role, Leader, Status string
					Applied, Commit            uint64
				}
				err = json.NewDecoder(resp.Body).Decode(&body)
				resp.Body.Close()
				if err != nil {
					t.Fatal(err)
				}
				if body.Node != nd.ID {
					t.Fatalf("%s %s: %d %+v", nd.ID, path, resp.StatusCode, body)
				}
				last = fmt.Sprintf("%d %+v", resp.StatusCode, body)
				leader := c.WaitLeader()
				wantRole := "Follower"
				if nd == leader {
					wantRole = "Leader"
				}
				return resp.StatusCode == http.StatusOK && body.Leader == leader.ID && body.Role == wantRole && body.Applied != 0
			})
			t.Logf("%s %s: %s", nd.ID, path, last)
		}
		srv.Close()
	}
	// A node cut off from its peers is up but not ready.
	leader := c.WaitLeader()
	for _, nd := range c.Nodes {
		if nd != leader {
			c.KillNode(nd)
		}
	}
	srv := httptest.NewServer(transport.HealthHandler(leader.Node))
	defer srv.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(srv.URL + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusServiceUnavailable {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("/readyz still 200 without a quorum")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func Test_SlowConsumer_Disconnected(t *testing.T) {
	c := startCluster(t, 1, transport.Options{SendQueueBytes: 256 << 10})
	slow := login(t, c, c.Nodes[0].URL, "slow")
	subscribe(t, slow, "flood.>")
	pub := c.Dial("flooder")
	body := strings.Repeat("x", 8<<10)
	// The subscriber reads nothing: the socket buffers fill, then its
	// send queue passes its byte budget.
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				if _, err := pub.Publish(context.Background(), "flood.t", map[string]any{"w": w, "i": i, "pad": body}); err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	// The server ended the connection: its subscription is gone.
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, err := pub.Publish(context.Background(), "flood.t", "probe")
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the slow subscriber was not disconnected")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Its socket ends after what was already sent; the close frame (4008)
	// arrives only if there was room for it.
	for {
		if _, err := slow.readWithin(10 * time.Second); err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) && ce.Code != transport.CloseSlowConsumer {
				t.Fatalf("close code %d, want %d", ce.Code, transport.CloseSlowConsumer)
			}
			var ne interface{ Timeout() bool }
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("the slow subscriber's socket stayed open")
			}
			return
		}
	}
}

func Test_Keepalive_ClientPingsCountAsActivity(t *testing.T) {
	c := startCluster(t, 1, transport.Options{PingInterval: time.Hour, IdleTimeout: keepaliveIdle})
	rc := login(t, c, c.Nodes[0].URL, "pinger")
	pongs := make(chan struct{}, 16)
	rc.ws.SetPongHandler(func(string) error { pongs <- struct{}{}; return nil })
	// The server never pings (PingInterval is an hour); the client's own
	// pings, every fifth of an idle timeout for three idle timeouts, keep
	// it open.
	done := make(chan error, 1)
	go func() {
		_, _, err := rc.ws.ReadMessage()
		done <- err
	}()
	for range 15 {
		if err := rc.ws.WriteControl(websocket.PingMessage, []byte("p"), time.Now().Add(time.Second)); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			t.Fatalf("connection ended while the client pinged: %v", err)
		case <-pongs:
		case <-time.After(5 * time.Second):
			t.Fatal("no pong")
		}
		time.Sleep(keepaliveIdle / 5) // the client's ping interval
	}
}
