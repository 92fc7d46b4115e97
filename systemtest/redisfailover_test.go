package systemtest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisClients returns a go-redis client per node of c (TLS with the
// cluster CA: outside --dev the Redis port serves TLS).
func redisClients(t *testing.T, c *faultCluster) []*redis.Client {
	t.Helper()
	pem, err := os.ReadFile(c.ca)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	var out []*redis.Client
	for _, nd := range c.nodes {
		cl := redis.NewClient(&redis.Options{
			Addr:         net.JoinHostPort(nd.ip, "4437"),
			TLSConfig:    &tls.Config{RootCAs: pool, ServerName: nd.ip, MinVersion: tls.VersionTLS12},
			MaxRetries:   -1,
			DialTimeout:  2 * time.Second,
			ReadTimeout:  15 * time.Second,
			WriteTimeout: 2 * time.Second,
		})
		t.Cleanup(func() { cl.Close() })
		out = append(out, cl)
	}
	return out
}

// go-redis writers on every node while the leader is killed: every write
// acknowledged is on every node afterwards. A third of the writers SET
// keys, a quarter RPUSH elements to one list, a quarter XADD entries to
// one stream, a quarter XADD to a broker queue's stream "mcp:queued"
// (pushes and appends are retried after an unknown outcome, so one may be
// there twice: at least once is the promise).
func Test_Fault_RedisLeaderKill(t *testing.T) {
	const kinds = 4
	const writers, perWriter = 8, 110 // writers: a multiple of kinds
	c := newFaultCluster(t, 3, clusterOpts{})
	c.waitAllReady(30 * time.Second)
	clients := redisClients(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	var acked sync.Map    // key -> value
	var pushed sync.Map   // element -> true
	var appended sync.Map // stream entry value -> true
	var queued sync.Map   // queue message value -> true
	var nacked, done atomic.Int64
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				key, val := fmt.Sprintf("w%d:%d", w, i), fmt.Sprintf("v%d-%d", w, i)
				// Retried on the next node until acknowledged.
				for try := 0; ; try++ {
					cl := clients[(w+try)%len(clients)]
					wctx, wcancel := context.WithTimeout(ctx, 12*time.Second)
					var err error
					switch w % kinds {
					case 0:
						err = cl.Set(wctx, key, val, 0).Err()
					case 1:
						err = cl.RPush(wctx, "pushed", val).Err()
					case 2:
						err = cl.XAdd(wctx, &redis.XAddArgs{Stream: "appended", Values: []any{"v", val}}).Err()
					default:
						err = cl.XAdd(wctx, &redis.XAddArgs{Stream: "mcp:queued", Values: []any{"v", val}}).Err()
					}
					wcancel()
					if err == nil {
						switch w % kinds {
						case 0:
							acked.Store(key, val)
						case 1:
							pushed.Store(val, true)
						case 2:
							appended.Store(val, true)
						default:
							queued.Store(val, true)
						}
						break
					}
					nacked.Add(1)
					if ctx.Err() != nil {
						return
					}
				}
				done.Add(1)
			}
		}()
	}
	waitFor(t, 60*time.Second, "a third of the writes", func() error {
		if done.Load() < writers*perWriter/kinds {
			return errorString("not yet")
		}
		return nil
	})
	leader := c.leader(20 * time.Second)
	t.Logf("killing the leader %s after %d writes", leader.id, done.Load())
	leader.kill()
	wg.Wait()
	leader.start(t)
	c.waitAllReady(30 * time.Second)
	c.converged(30 * time.Second)

	// Fresh clients: go-redis keeps refusing to dial a node for a while
	// after it failed to.
	clients = redisClients(t, c)
	n, lost := 0, 0
	acked.Range(func(k, v any) bool {
		n++
		for i, cl := range clients {
			got, err := cl.Get(ctx, k.(string)).Result()
			if err != nil || got != v.(string) {
				if lost++; lost <= 10 {
					t.Errorf("acknowledged %s=%s: node n%d has %q (%v)", k, v, i+1, got, err)
				}
			}
		}
		return true
	})
	for i, cl := range clients {
		elems, err := cl.LRange(ctx, "pushed", 0, -1).Result()
		if err != nil {
			t.Fatalf("n%d LRANGE: %v", i+1, err)
		}
		have := map[string]bool{}
		for _, e := range elems {
			have[e] = true
		}
		pushed.Range(func(k, _ any) bool {
			n++
			if !have[k.(string)] {
				if lost++; lost <= 10 {
					t.Errorf("acknowledged RPUSH %s missing on n%d", k, i+1)
				}
			}
			return true
		})
		for stream, added := range map[string]*sync.Map{"appended": &appended, "mcp:queued": &queued} {
			entries, err := cl.XRange(ctx, stream, "-", "+").Result()
			if err != nil {
				t.Fatalf("n%d XRANGE %s: %v", i+1, stream, err)
			}
			inStream := map[string]bool{}
			for _, e := range entries {
				if v, ok := e.Values["v"].(string); ok {
					inStream[v] = true
				}
			}
			added.Range(func(k, _ any) bool {
				n++
				if !inStream[k.(string)] {
					if lost++; lost <= 10 {
						t.Errorf("acknowledged XADD %s missing from %s on n%d", k, stream, i+1)
					}
				}
				return true
			})
		}
	}
	if lost > 0 {
		for i, cl := range clients {
			size, err := cl.DBSize(ctx).Result()
			info, _ := cl.Info(ctx, "replication").Result()
			a, d, derr := digestOf(c.nodes[i].health)
			t.Logf("n%d: dbsize %d (%v), applied %d digest %.12s (%v), %q", i+1, size, err, a, d, derr, info)
		}
		t.Fatalf("%d acknowledged writes missing or wrong on some node", lost)
	}
	// n counts SETs once, RPUSHes and XADDs once per node.
	if want := writers/kinds*perWriter + 3*writers/kinds*perWriter*len(clients); n != want {
		t.Fatalf("%d acknowledged writes checked, want %d", n, want)
	}
	t.Logf("%d acknowledged writes on every node; %d attempts failed and were retried", n, nacked.Load())
}
