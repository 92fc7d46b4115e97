package client

import (
	"context"
	"crypto/ed25519"
	"errors"
	"sync"
	"time"
)

// Bounds of the cache of sender keys.
const (
	keyCacheSize = 1024
	keyCacheTTL  = 5 * time.Minute
)

// senderKey is what verifies one agent's envelopes, as agent.key reports it.
type senderKey struct {
	alg     string
	public  ed25519.PublicKey // alg ed25519
	revoked int64             // unix ms; 0 while the agent is active
}

// keyCache holds the keys of the senders a client verified, at most size
// of them, each for ttl after it was fetched. Concurrent lookups of an
// agent whose key is being fetched wait for that fetch instead of making
// their own. Failed fetches are not cached.
type keyCache struct {
	size  int
	ttl   time.Duration
	fetch func(ctx context.Context, agent string) (senderKey, error)

	mu      sync.Mutex
	entries map[string]*keyEntry
}

type keyEntry struct {
	ready   chan struct{} // closed once key, err and fetched are set
	key     senderKey
	err     error
	fetched time.Time
}

func newKeyCache(fetch func(ctx context.Context, agent string) (senderKey, error)) *keyCache {
	return &keyCache{size: keyCacheSize, ttl: keyCacheTTL, fetch: fetch, entries: make(map[string]*keyEntry)}
}

// get returns the key of agent, fetching it when it is not cached, has
// expired, or is the entry stale (which failed to verify and may have been
// replaced since). fresh reports that the key was fetched during this call.
func (kc *keyCache) get(ctx context.Context, agent string, stale *keyEntry) (e *keyEntry, fresh bool, err error) {
	for {
		kc.mu.Lock()
		e = kc.entries[agent]
		if e != nil && e != stale {
			select {
			case <-e.ready:
				if time.Since(e.fetched) < kc.ttl {
					kc.mu.Unlock()
					return e, false, nil
				}
			default:
				// Another call is fetching this key: wait for it.
				kc.mu.Unlock()
				select {
				case <-e.ready:
				case <-ctx.Done():
					return nil, false, ctx.Err()
				}
				if e.err == nil {
					return e, true, nil
				}
				if isContextErr(e.err) && ctx.Err() == nil {
					continue // the fetching call gave up; this one has not
				}
				return nil, false, e.err
			}
		}
		e = &keyEntry{ready: make(chan struct{})}
		kc.insertLocked(agent, e)
		kc.mu.Unlock()

		e.key, e.err = kc.fetch(ctx, agent)
		e.fetched = time.Now()
		close(e.ready)
		if e.err != nil {
			kc.mu.Lock()
			if kc.entries[agent] == e {
				delete(kc.entries, agent)
			}
			kc.mu.Unlock()
			return nil, false, e.err
		}
		return e, true, nil
	}
}

// insertLocked stores e under agent, making room first when the cache is
// full: expired entries go, else the one fetched longest ago. Entries
// still being fetched are kept.
func (kc *keyCache) insertLocked(agent string, e *keyEntry) {
	if _, ok := kc.entries[agent]; !ok && len(kc.entries) >= kc.size {
		var oldest string
		var oldestAt time.Time
		for name, x := range kc.entries {
			select {
			case <-x.ready:
			default:
				continue
			}
			if time.Since(x.fetched) >= kc.ttl {
				delete(kc.entries, name)
				continue
			}
			if oldest == "" || x.fetched.Before(oldestAt) {
				oldest, oldestAt = name, x.fetched
			}
		}
		if len(kc.entries) >= kc.size && oldest != "" {
			delete(kc.entries, oldest)
		}
	}
	kc.entries[agent] = e
}

// len returns the number of cached entries.
func (kc *keyCache) len() int {
	kc.mu.Lock()
	defer kc.mu.Unlock()
	return len(kc.entries)
}

func isContextErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}
