package client

import (
	"context"
	"sync"
)

// mailbox hands pushed items from the connection reader to the user through
// a channel without ever blocking the reader: items wait in a slice and a
// pump goroutine feeds the channel.
type mailbox[T any] struct {
	ch     chan T
	notify chan struct{}
	halted chan struct{}
	limit  int // 0: unbounded
	// admit, if set before the pump starts, is called by the pump for each
	// item; items it refuses are not handed over.
	admit func(T) bool

	mu       sync.Mutex
	buf      []T
	dropped  uint64
	ended    bool
	err      error
	haltOnce sync.Once
}

func newMailbox[T any](limit int) *mailbox[T] {
	return &mailbox[T]{
		ch:     make(chan T),
		notify: make(chan struct{}, 1),
		halted: make(chan struct{}),
		limit:  limit,
	}
}

// put queues v; it reports false when v was dropped (full or ended).
func (m *mailbox[T]) put(v T) bool {
	m.mu.Lock()
	if m.ended || (m.limit > 0 && len(m.buf) >= m.limit) {
		if !m.ended {
			m.dropped++
		}
		m.mu.Unlock()
		return false
	}
	m.buf = append(m.buf, v)
	m.mu.Unlock()
	m.wake()
	return true
}

func (m *mailbox[T]) wake() {
	select {
	case m.notify <- struct{}{}:
	default:
	}
}

// filter drops the queued items for which keep is false.
func (m *mailbox[T]) filter(keep func(T) bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	kept := m.buf[:0]
	for _, v := range m.buf {
		if keep(v) {
			kept = append(kept, v)
		}
	}
	var zero T
	for i := len(kept); i < len(m.buf); i++ {
		m.buf[i] = zero
	}
	m.buf = kept
}

// end accepts no more items; the channel closes once the queued ones are
// taken. err (may be nil) is reported by Next afterwards.
func (m *mailbox[T]) end(err error) {
	m.mu.Lock()
	if !m.ended {
		m.ended = true
		m.err = err
	}
	m.mu.Unlock()
	m.wake()
}

// halt ends the mailbox at once, discarding queued items.
func (m *mailbox[T]) halt(err error) {
	m.end(err)
	m.haltOnce.Do(func() { close(m.halted) })
}

func (m *mailbox[T]) pump() {
	defer close(m.ch)
	for {
		m.mu.Lock()
		if len(m.buf) == 0 {
			ended := m.ended
			m.mu.Unlock()
			if ended {
				return
			}
			select {
			case <-m.notify:
			case <-m.halted:
				return
			}
			continue
		}
		v := m.buf[0]
		var zero T
		m.buf[0] = zero
		m.buf = m.buf[1:]
		m.mu.Unlock()
		if m.admit != nil && !m.admit(v) {
			continue
		}
		select {
		case m.ch <- v:
		case <-m.halted:
			return
		}
	}
}

func (m *mailbox[T]) next(ctx context.Context) (T, error) {
	var zero T
	select {
	case v, ok := <-m.ch:
		if ok {
			return v, nil
		}
		m.mu.Lock()
		err := m.err
		m.mu.Unlock()
		if err == nil {
			err = ErrEnded
		}
		return zero, err
	case <-ctx.Done():
		return zero, ctx.Err()
	}
}

func (m *mailbox[T]) reason() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.err
}

func (m *mailbox[T]) droppedCount() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.dropped
}
