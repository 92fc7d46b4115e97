package cluster

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mcpd/mcpd/pki"
)

// syncBuffer is a log destination tests can read while nodes write.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// tlsMux serves a mux with mutual TLS for node id of peers on a loopback
// port, routing raft connections to its raftCh.
func tlsMux(t *testing.T, dir, id string, peers map[string]string, ln net.Listener, log *slog.Logger) *mux {
	t.Helper()
	mat, err := pki.EnsureNodeCert(dir, id, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	m := newMux(ln, ln.Addr(), log)
	m.auth = newPeerAuth(&PeerTLS{Server: mat.PeerServerTLS(), Client: mat.PeerClientTLS()}, id, peers)
	t.Cleanup(m.close)
	return m
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// A dialer that sends nothing, or garbage, holds only its own goroutine
// until the handshake deadline: peers keep connecting meanwhile, and the
// silent connection is closed when the deadline passes.
func Test_Mux_SilentOrGarbageDialerHoldsNothing(t *testing.T) {
	dir := t.TempDir()
	ln1, ln2 := listen(t), listen(t)
	peers := map[string]string{"n1": ln1.Addr().String(), "n2": ln2.Addr().String()}
	logs := &syncBuffer{}
	n1 := tlsMux(t, dir, "n1", peers, ln1, slog.New(slog.NewTextHandler(logs, nil)))
	n1.handshakeTimeout = time.Second
	go n1.serve()
	n2 := tlsMux(t, dir, "n2", peers, ln2, quiet)

	var silent []net.Conn
	for range 64 {
		c, err := net.Dial("tcp", peers["n1"])
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		silent = append(silent, c)
	}
	garbage, err := net.Dial("tcp", peers["n1"])
	if err != nil {
		t.Fatal(err)
	}
	defer garbage.Close()
	if _, err := garbage.Write([]byte("R\x00\x01GET / HTTP/1.1\r\n\r\n")); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	c, err := n2.dial(peers["n1"], protoRaft, 2*time.Second)
	if err != nil {
		t.Fatalf("peer dial while 64 dialers stay silent: %v", err)
	}
	defer c.Close()
	select {
	case got := <-n1.raftCh:
		got.Close()
	case <-time.After(2 * time.Second):
		t.Fatal("the peer's raft connection was not routed")
	}
	if d := time.Since(start); d >= n1.handshakeTimeout {
		t.Errorf("a peer waited %v, as long as a silent dialer may", d)
	}

	// The garbage is refused at once; the silent ones once the deadline
	// passes.
	garbage.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := garbage.Read(make([]byte, 64)); err == nil {
		t.Error("garbage got an answer")
	} else if time.Since(start) >= n1.handshakeTimeout {
		t.Errorf("garbage held its connection for %v", time.Since(start))
	}
	for _, s := range silent {
		s.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(s, make([]byte, 1)); err == nil || isTimeout(err) {
			t.Fatalf("silent dialer: %v, want the connection closed by the mux", err)
		}
	}
	// 65 refusals from one host: one line.
	if n := strings.Count(logs.String(), "refused a connection without a valid peer certificate"); n != 1 {
		t.Errorf("%d refusal lines, want 1:\n%s", n, logs)
	}
	if !strings.Contains(logs.String(), "does not look like a TLS handshake") {
		t.Errorf("the logged reason is not the garbage's:\n%s", logs)
	}
}

// Closing the mux ends the handshakes under way, long before their
// deadline.
func Test_Mux_CloseEndsHandshakes(t *testing.T) {
	ln := listen(t)
	m := tlsMux(t, t.TempDir(), "n1", map[string]string{"n1": ln.Addr().String()}, ln, quiet)
	m.handshakeTimeout = time.Minute
	go m.serve()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A byte of a ClientHello: the handshake has started.
	if _, err := c.Write([]byte{0x16}); err != nil {
		t.Fatal(err)
	}
	m.close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("read after close: %v, want the connection closed", err)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// A node dialing a configured peer refuses a certificate of the cluster
// CA that names another node (someone else holds that address), and the
// listener refuses a certificate naming a node outside the cluster.
func Test_Mux_NodeIDsInCertificates(t *testing.T) {
	dir := t.TempDir()
	ln1, ln2, ln3 := listen(t), listen(t), listen(t)
	peers := map[string]string{"n1": ln1.Addr().String(), "n2": ln2.Addr().String(), "n3": ln3.Addr().String()}
	n1 := tlsMux(t, dir, "n1", peers, ln1, quiet)
	go n1.serve()
	// n3's address is served by a process holding n2's certificate.
	impostor := tlsMux(t, dir, "n2", peers, ln3, quiet)
	go impostor.serve()

	if _, err := n1.dial(peers["n3"], protoRaft, 2*time.Second); err == nil || !strings.Contains(err.Error(), `expected node "n3"`) {
		t.Errorf("n1 dialed n3 and accepted n2's certificate: %v", err)
	}
	// An outsider with a certificate of the cluster CA.
	stranger := tlsMux(t, dir, "n9", map[string]string{"n9": ln2.Addr().String(), "n1": peers["n1"]}, ln2, quiet)
	c, err := stranger.dial(peers["n1"], protoRaft, 2*time.Second)
	if err == nil {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	if err == nil || !strings.Contains(err.Error(), "bad certificate") {
		t.Errorf("n9 connected to n1: %v", err)
	}
	// The members themselves get through.
	n2 := tlsMux(t, dir, "n2", peers, listen(t), quiet)
	c, err = n2.dial(peers["n1"], protoRaft, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

func Test_Refusals_OneLinePerKeyPerInterval(t *testing.T) {
	r := refusals{every: time.Minute}
	t0 := time.Unix(1_700_000_000, 0)
	if log, _ := r.note("a", t0); !log {
		t.Error("first refusal not logged")
	}
	for i := range 5 {
		if log, _ := r.note("a", t0.Add(time.Duration(i)*time.Second)); log {
			t.Errorf("refusal %d within the interval logged", i)
		}
	}
	if log, _ := r.note("b", t0.Add(time.Second)); !log {
		t.Error("another key's first refusal not logged")
	}
	if log, skipped := r.note("a", t0.Add(time.Minute)); !log || skipped != 5 {
		t.Errorf("after the interval: log %v, skipped %d, want true, 5", log, skipped)
	}

	// Many hosts at once share one line per interval, and the table stays
	// bounded.
	r = refusals{every: time.Minute}
	logged := 0
	for i := range 3 * maxRefusalHosts {
		if log, _ := r.note(fmt.Sprint("10.0.", i/256, ".", i%256), t0); log {
			logged++
		}
	}
	if logged > maxRefusalHosts+1 || len(r.hosts) > maxRefusalHosts+1 {
		t.Errorf("%d lines, %d hosts tracked for a flood", logged, len(r.hosts))
	}
}

func Test_PeerTLS_CheckRefusesWeakConfigs(t *testing.T) {
	mat, err := pki.EnsureNodeCert(t.TempDir(), "n1", nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, mutate := range map[string]func(p *PeerTLS){
		"no server":           func(p *PeerTLS) { p.Server = nil },
		"no client":           func(p *PeerTLS) { p.Client = nil },
		"client certs asked":  func(p *PeerTLS) { p.Server.ClientAuth = tls.VerifyClientCertIfGiven },
		"system CAs (server)": func(p *PeerTLS) { p.Server.ClientCAs = nil },
		"system CAs (client)": func(p *PeerTLS) { p.Client.RootCAs = nil },
		"skip verify":         func(p *PeerTLS) { p.Client.InsecureSkipVerify = true },
		"no server cert":      func(p *PeerTLS) { p.Server.Certificates = nil },
		"no client cert":      func(p *PeerTLS) { p.Client.Certificates = nil },
		"per-client config": func(p *PeerTLS) {
			p.Server.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) { return nil, nil }
		},
	} {
		p := &PeerTLS{Server: mat.PeerServerTLS(), Client: mat.PeerClientTLS()}
		mutate(p)
		if err := p.check(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := (&PeerTLS{Server: mat.PeerServerTLS(), Client: mat.PeerClientTLS()}).check(); err != nil {
		t.Errorf("pki's configs refused: %v", err)
	}
}
