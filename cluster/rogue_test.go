package cluster_test

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"

	"github.com/mcpd/mcpd/cluster"
	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/internal/testcluster"
	"github.com/mcpd/mcpd/pki"
	"github.com/mcpd/mcpd/queue"
)

// The Raft port refuses every process without a valid node certificate:
// it cannot vote, append to the log, install a snapshot, trigger an
// election, forward commands or change the membership, and a process
// sitting at a member's address is sent nothing.

// logBuffer collects the cluster's log lines for the test to count.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if os.Getenv("MCPD_TEST_LOG") != "" {
		os.Stderr.Write(p)
	}
	return l.b.Write(p)
}

// count is the number of lines holding every one of subs.
func (l *logBuffer) count(subs ...string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range strings.Split(l.b.String(), "\n") {
		all := line != ""
		for _, s := range subs {
			all = all && strings.Contains(line, s)
		}
		if all {
			n++
		}
	}
	return n
}

func startLogged(t *testing.T) (*testcluster.Cluster, *logBuffer) {
	logs := &logBuffer{}
	c := testcluster.Start(t, 3, testcluster.Options{
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	return c, logs
}

// issueCert signs a node certificate for id with the CA in dir, valid from
// notBefore to notAfter.
func issueCert(t *testing.T, dir, id string, notBefore, notAfter time.Time) tls.Certificate {
	t.Helper()
	ca, err := tls.LoadX509KeyPair(filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: id},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		URIs:         []*url.URL{pki.NodeURI(id)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Leaf, key.Public(), ca.PrivateKey.(crypto.Signer))
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// rogue is a client the cluster must refuse, and the alert it gets.
type rogue struct {
	name string
	cfg  *tls.Config // nil: plaintext
	want string      // in the error the rogue sees
}

// rogues are clients that check nothing themselves, so that every refusal
// is the cluster's doing: one with no certificate, one with a certificate
// of another CA, one with an expired certificate of the cluster CA, one
// with a certificate of the cluster CA for a node outside the cluster.
// The expired and foreign certificates claim to be n2.
func rogues(t *testing.T, c *testcluster.Cluster) []rogue {
	t.Helper()
	foreign, err := pki.EnsureNodeCert(t.TempDir(), "n2", []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	expired := issueCert(t, c.TLSDir, "n2", now.Add(-48*time.Hour), now.Add(-24*time.Hour))
	stranger := issueCert(t, c.TLSDir, "n9", now.Add(-time.Hour), now.Add(24*time.Hour))
	// The certificate goes out whatever CAs the server asks for.
	skip := func(certs ...tls.Certificate) *tls.Config {
		return &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13,
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				if len(certs) == 0 {
					return &tls.Certificate{}, nil
				}
				return &certs[0], nil
			}}
	}
	return []rogue{
		{"no certificate", skip(), "certificate required"},
		{"another CA", skip(foreign.Cert), "unknown certificate authority"},
		{"expired", skip(expired), "expired certificate"},
		{"not a member", skip(stranger), "bad certificate"},
	}
}

// exchange dials addr as the rogue, speaks proto, sends body and reads
// the answer. Its error is what refused the rogue; nil means it got an
// answer.
func (r rogue) exchange(addr string, proto byte, body []byte) error {
	d := &net.Dialer{Timeout: 5 * time.Second}
	var c net.Conn
	var err error
	if r.cfg == nil {
		c, err = d.Dial("tcp", addr)
	} else {
		c, err = tls.DialWithDialer(d, "tcp", addr, r.cfg)
	}
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(append([]byte{proto}, body...)); err != nil {
		return err
	}
	_, err = c.Read(make([]byte, 1))
	return err
}

// rogueStream is a raft.StreamLayer that dials as a rogue.
type rogueStream struct {
	r  rogue
	ln net.Listener
}

func (s rogueStream) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	var c net.Conn
	var err error
	if s.r.cfg == nil {
		c, err = d.Dial("tcp", string(addr))
	} else {
		c, err = tls.DialWithDialer(d, "tcp", string(addr), s.r.cfg)
	}
	if err != nil {
		return nil, err
	}
	if _, err := c.Write([]byte{cluster.ProtoRaft}); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (s rogueStream) Accept() (net.Conn, error) { return s.ln.Accept() }
func (s rogueStream) Close() error              { return s.ln.Close() }
func (s rogueStream) Addr() net.Addr            { return s.ln.Addr() }

// rogueTransport is a raft transport dialing as r.
func rogueTransport(t *testing.T, r rogue) *raft.NetworkTransport {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  rogueStream{r: r, ln: ln},
		MaxPool: 1,
		Timeout: 5 * time.Second,
		Logger:  hclog.NewNullLogger(),
	})
	t.Cleanup(func() { trans.Close() })
	return trans
}

// rogueEnqueue is an entry that would put a message on rogue.q.
func rogueEnqueue(t *testing.T) (fsm.Command, []byte) {
	t.Helper()
	cmd, err := fsm.NewCommand(fsm.TypeEnqueue, "rogue/1/1", 1, &queue.EnqueueArgs{Queue: "rogue.q", From: "rogue", ID: "r1", Env: []byte(`{"id":"r1"}`)})
	if err != nil {
		t.Fatal(err)
	}
	data, err := fsm.EncodeEntry(&fsm.Entry{Time: time.Now().UnixMilli(), Cmds: []fsm.Command{cmd}})
	if err != nil {
		t.Fatal(err)
	}
	return cmd, data
}

func frame(t *testing.T, v any) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := cluster.WriteFrame(&b, v); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// elections is what the nodes' rafts saw of elections while it watched:
// the vote and pre-vote requests from the candidate "rogue", and the
// members' own: the terms they campaigned in, and how many of their
// campaigns a leadership transfer started (only a TimeoutNow does that).
type elections struct {
	rogue atomic.Int64

	mu        sync.Mutex
	terms     map[uint64]bool
	transfers int
}

// watchElections records what every node's raft is asked to vote on
// (raft calls the filter before it acts on the request).
func watchElections(t *testing.T, c *testcluster.Cluster) *elections {
	e := &elections{terms: map[uint64]bool{}}
	for _, nd := range c.Nodes {
		obs := raft.NewObserver(nil, false, func(o *raft.Observation) bool {
			switch req := o.Data.(type) {
			case raft.RequestVoteRequest:
				if string(req.ID) == "rogue" {
					e.rogue.Add(1)
					break
				}
				e.mu.Lock()
				e.terms[req.Term] = true
				if req.LeadershipTransfer {
					e.transfers++
				}
				e.mu.Unlock()
			case raft.RequestPreVoteRequest:
				if string(req.ID) == "rogue" {
					e.rogue.Add(1)
				}
			}
			return false
		})
		nd.Node.Raft().RegisterObserver(obs)
		t.Cleanup(func() { nd.Node.Raft().DeregisterObserver(obs) })
	}
	return e
}

// stableLeader waits until every node names the same leader in the same
// term, and returns them.
func stableLeader(t *testing.T, c *testcluster.Cluster) (*testcluster.Node, uint64) {
	t.Helper()
	var leader *testcluster.Node
	var term uint64
	testcluster.WaitFor(t, 20*time.Second, func() bool {
		leader = c.WaitLeader()
		term = leader.Node.Raft().CurrentTerm()
		for _, nd := range c.Nodes {
			if nd.Node.Leader() != leader.ID || nd.Node.Raft().CurrentTerm() != term {
				return false
			}
		}
		return leader.Node.IsLeader()
	})
	return leader, term
}

func voters(t *testing.T, nd *testcluster.Node) int {
	t.Helper()
	cf := nd.Node.Raft().GetConfiguration()
	if err := cf.Error(); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, s := range cf.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			n++
		}
	}
	return n
}

func Test_PeerTLS_RogueIsRefused(t *testing.T) {
	c, logs := startLogged(t)
	if _, err := c.Dial("alice").Enqueue(ctx(t), "legit", map[string]any{"n": 1}); err != nil {
		t.Fatal(err)
	}
	c.WaitApplied()
	leader, term := stableLeader(t, c)
	rogueTerm := term + 1000
	votes := watchElections(t, c)
	rs := rogues(t, c)
	cmd, entry := rogueEnqueue(t)

	t.Run("handshake", func(t *testing.T) {
		for _, r := range rs {
			for _, nd := range c.Nodes {
				if err := r.exchange(nd.RaftAddr(), cluster.ProtoRaft, nil); err == nil || !strings.Contains(err.Error(), r.want) {
					t.Errorf("%s to %s: %v, want %q", r.name, nd.ID, err, r.want)
				}
			}
		}
		// Plaintext: the port closes the connection without an answer.
		plain := rogue{name: "plaintext"}
		for _, nd := range c.Nodes {
			if err := plain.exchange(nd.RaftAddr(), cluster.ProtoRaft, []byte("\x00\x00\x00\x00")); err == nil || isTimeout(err) {
				t.Errorf("plaintext to %s: %v, want the connection closed", nd.ID, err)
			}
		}
	})

	t.Run("raft RPCs", func(t *testing.T) {
		prev := leader.Node.Raft().LastIndex()
		for _, r := range append(rs, rogue{name: "plaintext"}) {
			trans := rogueTransport(t, r)
			hdr := raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("rogue"), Addr: []byte(trans.LocalAddr())}
			for _, nd := range c.Nodes {
				id, addr := raft.ServerID(nd.ID), raft.ServerAddress(nd.RaftAddr())
				var vote raft.RequestVoteResponse
				if err := trans.RequestVote(id, addr, &raft.RequestVoteRequest{
					RPCHeader: hdr, Term: rogueTerm, LastLogIndex: prev + 1<<20, LastLogTerm: rogueTerm,
				}, &vote); err == nil {
					t.Errorf("%s: RequestVote to %s answered: %+v", r.name, nd.ID, vote)
				}
				var pre raft.RequestPreVoteResponse
				if err := trans.RequestPreVote(id, addr, &raft.RequestPreVoteRequest{
					RPCHeader: hdr, Term: rogueTerm, LastLogIndex: prev + 1<<20, LastLogTerm: rogueTerm,
				}, &pre); err == nil {
					t.Errorf("%s: RequestPreVote to %s answered: %+v", r.name, nd.ID, pre)
				}
				var app raft.AppendEntriesResponse
				if err := trans.AppendEntries(id, addr, &raft.AppendEntriesRequest{
					RPCHeader: hdr, Term: rogueTerm, PrevLogEntry: prev, PrevLogTerm: term,
					Entries:           []*raft.Log{{Index: prev + 1, Term: rogueTerm, Type: raft.LogCommand, Data: entry}},
					LeaderCommitIndex: prev + 1,
				}, &app); err == nil {
					t.Errorf("%s: AppendEntries to %s answered: %+v", r.name, nd.ID, app)
				}
				var snap raft.InstallSnapshotResponse
				if err := trans.InstallSnapshot(id, addr, &raft.InstallSnapshotRequest{
					RPCHeader: hdr, SnapshotVersion: raft.SnapshotVersionMax, Term: rogueTerm,
					LastLogIndex: prev + 1<<20, LastLogTerm: rogueTerm, Size: 4,
				}, &snap, strings.NewReader("junk")); err == nil {
					t.Errorf("%s: InstallSnapshot to %s answered: %+v", r.name, nd.ID, snap)
				}
				var now raft.TimeoutNowResponse
				if err := trans.TimeoutNow(id, addr, &raft.TimeoutNowRequest{RPCHeader: hdr}, &now); err == nil {
					t.Errorf("%s: TimeoutNow to %s answered: %+v", r.name, nd.ID, now)
				}
			}
		}
	})

	t.Run("forward", func(t *testing.T) {
		req := frame(t, cluster.FwdRequest{ID: 1, Cmds: []fsm.Command{cmd}})
		for _, r := range append(rs, rogue{name: "plaintext"}) {
			if err := r.exchange(leader.RaftAddr(), cluster.ProtoForward, req); err == nil {
				t.Errorf("%s: forwarded command answered", r.name)
			}
		}
	})

	t.Run("restore", func(t *testing.T) {
		req := frame(t, cluster.RestoreRequest{Actor: "rogue", Size: 4})
		for _, r := range append(rs, rogue{name: "plaintext"}) {
			if err := r.exchange(leader.RaftAddr(), cluster.ProtoRestore, append(req, "junk"...)); err == nil {
				t.Errorf("%s: restore answered", r.name)
			}
		}
	})

	// The requests below go to the node that led at the start; whether it
	// still leads does not matter, the refusals come before any question
	// of leadership.
	var victim *testcluster.Node
	for _, nd := range c.Nodes {
		if nd != leader {
			victim = nd
			break
		}
	}
	t.Run("membership", func(t *testing.T) {
		req := frame(t, cluster.MemberRequest{Op: cluster.MemberDemote, ID: victim.ID})
		for _, r := range append(rs, rogue{name: "plaintext"}) {
			if err := r.exchange(leader.RaftAddr(), cluster.ProtoMember, req); err == nil {
				t.Errorf("%s: demotion of %s answered", r.name, victim.ID)
			}
		}
	})

	// A member's own certificate gets it through, but it may change only
	// its own membership.
	t.Run("a member about another", func(t *testing.T) {
		var other *testcluster.Node
		for _, nd := range c.Nodes {
			if nd != victim && nd != leader {
				other = nd
			}
		}
		cfg := other.TLS.PeerClientTLS()
		cfg.ServerName = "127.0.0.1"
		conn, err := tls.Dial("tcp", leader.RaftAddr(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		req := frame(t, cluster.MemberRequest{Op: cluster.MemberDemote, ID: victim.ID})
		if _, err := conn.Write(append([]byte{cluster.ProtoMember}, req...)); err != nil {
			t.Fatal(err)
		}
		var resp cluster.MemberResponse
		if err := cluster.ReadFrame(bufio.NewReader(conn), &resp); err != nil {
			t.Fatal(err)
		}
		if resp.OK || !strings.Contains(resp.Msg, "may not change the membership") {
			t.Errorf("%s asking to demote %s: %+v", other.ID, victim.ID, resp)
		}
	})

	// Nothing changed: no vote request from the rogue reached raft, every
	// node is still a voter, the rogue's message is nowhere, and the term
	// and the leader are the ones of the start, the same everywhere.
	//
	// With the test cluster's fast timeouts (300 ms; a leader's lease is
	// 150 ms), a loaded machine can stall a node long enough for a member
	// to time out and win an election meanwhile: that is raft working, not
	// the rogue's doing, if every term since is one a member campaigned in
	// by timing out, not by a leadership transfer (which only a TimeoutNow
	// starts, and nothing here transfers leadership), and none is as high
	// as the rogue's terms.
	if _, err := c.Dial("bob").Enqueue(ctx(t), "legit", map[string]any{"n": 2}); err != nil {
		t.Fatal(err)
	}
	c.WaitApplied()
	now, nowTerm := stableLeader(t, c)
	for _, nd := range c.Nodes {
		if n := voters(t, nd); n != 3 {
			t.Errorf("%s: %d voters", nd.ID, n)
		}
		var info queue.Info
		if err := nd.Node.Read(func(tx *bolt.Tx) (err error) { info, err = queue.ReadInfo(tx, "rogue.q"); return err }); err != nil {
			t.Fatal(err)
		}
		if info != (queue.Info{}) {
			t.Errorf("%s: rogue.q holds %+v", nd.ID, info)
		}
		// Dozens of refusals from one host: one line per node.
		if n := logs.count("refused a connection without a valid peer certificate", "node="+nd.ID); n != 1 {
			t.Errorf("%s logged %d refusals, want 1 per interval", nd.ID, n)
		}
	}
	if n := votes.rogue.Load(); n != 0 {
		t.Errorf("raft saw %d vote requests from the rogue", n)
	}
	votes.mu.Lock()
	defer votes.mu.Unlock()
	if votes.transfers != 0 {
		t.Errorf("%d campaigns started by a leadership transfer: a TimeoutNow got through", votes.transfers)
	}
	var held []uint64
	for tm := range votes.terms {
		held = append(held, tm)
		if tm >= rogueTerm {
			t.Errorf("a member campaigned in term %d, the rogue's terms start at %d", tm, rogueTerm)
		}
	}
	slices.Sort(held)
	switch {
	case nowTerm == term && now != leader:
		t.Errorf("leader %s, was %s, in the same term %d", now.ID, leader.ID, term)
	case nowTerm != term && !votes.terms[nowTerm]:
		t.Errorf("term %d, was %d, and no member campaigned in it (they did in %v)", nowTerm, term, held)
	case nowTerm != term:
		t.Logf("a member timed out: elections in terms %v; term %d and leader %s, were %d and %s", held, nowTerm, now.ID, term, leader.ID)
	}
}

// bufferedConn reads what a bufio.Reader over its Conn holds first.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// A process at a member's address, with a certificate from another CA, an
// expired one, or one of the cluster CA naming another node, completes no
// handshake with the nodes that dial it, so it is sent no entry.
func Test_PeerTLS_ImpostorAtAMembersAddressIsSentNothing(t *testing.T) {
	c, logs := startLogged(t)
	leader := c.WaitLeader()
	victim := c.Followers()[0]
	c.StopNode(victim)
	cl := c.Dial("alice")

	foreign, err := pki.EnsureNodeCert(t.TempDir(), victim.ID, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	var sibling *testcluster.Node
	for _, nd := range c.Nodes {
		if nd != victim && nd != leader {
			sibling = nd
		}
	}
	for _, tc := range []struct {
		name string
		cert tls.Certificate
	}{
		{"another CA", foreign.Cert},
		{"expired", issueCert(t, c.TLSDir, victim.ID, now.Add(-48*time.Hour), now.Add(-24*time.Hour))},
		{"another member's", sibling.TLS.Cert},
		{"not a member", issueCert(t, c.TLSDir, "n9", now.Add(-time.Hour), now.Add(24*time.Hour))},
	} {
		ln, err := net.Listen("tcp", victim.RaftAddr())
		if err != nil {
			t.Fatal(err)
		}
		var attempts, completed, bytesRead atomic.Int64
		done := make(chan struct{})
		go func() {
			defer close(done)
			var wg sync.WaitGroup
			defer wg.Wait()
			for {
				raw, err := ln.Accept()
				if err != nil {
					return
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer raw.Close()
					raw.SetDeadline(time.Now().Add(5 * time.Second))
					attempts.Add(1)
					br := bufio.NewReader(raw)
					if b, err := br.Peek(1); err != nil || b[0] != 0x16 { // not a TLS handshake record
						n, _ := io.Copy(io.Discard, br)
						bytesRead.Add(n)
						return
					}
					conn := tls.Server(bufferedConn{raw, br}, &tls.Config{Certificates: []tls.Certificate{tc.cert}, ClientAuth: tls.RequireAnyClientCert})
					if conn.Handshake() != nil {
						return
					}
					completed.Add(1)
					n, _ := io.Copy(io.Discard, conn)
					bytesRead.Add(n)
				}()
			}
		}()
		// The cluster keeps committing while its nodes try the impostor.
		testcluster.WaitFor(t, 20*time.Second, func() bool {
			if _, err := cl.Enqueue(ctx(t), "legit", map[string]any{"cert": tc.name}); err != nil {
				t.Fatal(err)
			}
			return attempts.Load() >= 3
		})
		ln.Close()
		<-done
		if completed.Load() != 0 || bytesRead.Load() != 0 {
			t.Errorf("%s: %d handshakes completed, %d bytes sent to the impostor", tc.name, completed.Load(), bytesRead.Load())
		}
	}
	if n := logs.count("TLS handshake with a peer failed", "peer="+victim.RaftAddr(), "node="+leader.ID); n != 1 {
		t.Errorf("the leader logged %d failed handshakes with the impostor, want 1 per interval", n)
	}
	c.RestartNode(victim)
	c.WaitConverged()
}
