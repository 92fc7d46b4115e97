package client

import (
	"context"
	"errors"
)

// A stream is the connection-independent side of a consumer or a
// subscription: it remembers the request that opened it and re-issues it
// on every new connection. The server gives it a new id each time; the
// connection's route table maps that id back to the stream.

type streamKind uint8

const (
	kindConsumer streamKind = iota + 1
	kindSub
	kindWatch
)

// sink receives what a stream's server side pushes.
type sink interface {
	push(cn *conn, f *inFrame)
	dropFrom(cn *conn) // cn died: its buffered pushes are stale
	end(err error)     // no more pushes; drain what is buffered
	halt(err error)    // client closed: stop at once
}

type stream struct {
	c       *Client
	kind    streamKind
	open    *frame // consume or subscribe request, without rid
	closeOp string // cancel or unsubscribe
	idField string // consumer or sub
	sink    sink

	// Guarded by c.mu.
	cn         *conn  // connection the stream is open or opening on
	id         string // server id on cn; "" while opening
	registered bool   // in c.streams, re-opened on reconnect
	cancelled  bool
}

func (st *stream) push(cn *conn, f *inFrame) { st.sink.push(cn, f) }
func (st *stream) dropFrom(cn *conn)         { st.sink.dropFrom(cn) }
func (st *stream) stop(err error)            { st.sink.halt(err) }

func (st *stream) idOf(f *inFrame) string {
	switch st.kind {
	case kindConsumer:
		return f.Consumer
	case kindWatch:
		return f.Watch
	}
	return f.Sub
}

// opener is a sink that wants to know when its stream is open on a
// connection (first or again): a task watch reads the current state then.
type opener interface {
	opened(cn *conn)
}

func (st *stream) closeFrame(id string) *frame {
	return newFrame(st.closeOp).str(st.idField, id)
}

// onOpened returns the hook the reader runs on the ok of a consume or
// subscribe sent on cn, before any push for the new id is read.
func (c *Client) onOpened(st *stream, cn *conn, initial bool) func(*inFrame) {
	return func(f *inFrame) {
		id := st.idOf(f)
		c.mu.Lock()
		defer c.mu.Unlock()
		stale := c.closed || st.cancelled || (initial && st.registered) || (!initial && st.cn != cn)
		if stale || id == "" {
			if id != "" {
				cn.post(st.closeFrame(id))
			}
			return
		}
		st.cn, st.id = cn, id
		st.registered = true
		c.streams[st] = struct{}{}
		cn.setRoute(st.kind, id, st)
		if o, ok := st.sink.(opener); ok {
			o.opened(cn)
		}
		if c.cur != nil && c.cur != cn {
			// cn was replaced while the request was in flight.
			c.reattachLocked(st, c.cur)
		}
	}
}

// onAbandoned returns the hook for an ok that arrives after its caller gave
// up: the server side is closed again.
func onAbandoned(st *stream, cn *conn) func(*inFrame) {
	return func(f *inFrame) {
		if id := st.idOf(f); id != "" {
			cn.post(st.closeFrame(id))
		}
	}
}

// openStream opens st for the first time, retrying on a dropped connection
// or unavailable until ctx ends.
func (c *Client) openStream(ctx context.Context, st *stream) error {
	var b backoff
	b.min, b.max = c.opts.MinBackoff/2, c.opts.MaxBackoff
	var last error
	for {
		cn, err := c.conn(ctx)
		if err != nil {
			return withLast(err, last)
		}
		_, err = cn.do(ctx, st.open, c.onOpened(st, cn, true), onAbandoned(st, cn))
		if err == nil {
			return nil
		}
		c.mu.Lock()
		registered, closed := st.registered, c.closed
		c.mu.Unlock()
		switch {
		case registered:
			return nil // the ok arrived just before the connection dropped
		case closed:
			return ErrClosed
		case ctx.Err() != nil || !retryable(err):
			return withLast(err, last)
		}
		last = err
		if !sleepCtx(ctx, c.ctx.Done(), b.next()) {
			return withLast(ctx.Err(), last)
		}
	}
}

// reattachLocked re-opens st on cn in the background. c.mu must be held.
func (c *Client) reattachLocked(st *stream, cn *conn) {
	if st.cancelled || st.cn == cn || c.closed {
		return
	}
	st.cn, st.id = cn, ""
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.resume(st, cn)
	}()
}

func (c *Client) resume(st *stream, cn *conn) {
	var b backoff
	b.min, b.max = c.opts.MinBackoff, c.opts.MaxBackoff
	for {
		_, err := cn.do(c.ctx, st.open, c.onOpened(st, cn, false), onAbandoned(st, cn))
		if err == nil || c.ctx.Err() != nil || errors.Is(err, ErrDisconnected) {
			return // a dropped connection is handled by the next install
		}
		c.mu.Lock()
		superseded := st.cn != cn || st.cancelled
		c.mu.Unlock()
		if superseded {
			return
		}
		if retryable(err) {
			if !sleepCtx(c.ctx, cn.done, b.next()) {
				return
			}
			continue
		}
		c.log.Error("cannot re-open after reconnect; ending it", "op", st.open.opName(), "err", err)
		c.mu.Lock()
		st.cancelled = true
		delete(c.streams, st)
		c.mu.Unlock()
		st.sink.end(err)
		return
	}
}

// closeStream cancels st on the server (if open) and ends its sink.
func (c *Client) closeStream(ctx context.Context, st *stream) error {
	c.mu.Lock()
	if st.cancelled {
		c.mu.Unlock()
		return nil
	}
	st.cancelled = true
	delete(c.streams, st)
	cn, id := st.cn, st.id
	c.mu.Unlock()
	var err error
	if cn != nil && id != "" {
		_, err = cn.do(ctx, st.closeFrame(id), nil, nil)
		cn.setRoute(st.kind, id, nil)
		if errors.Is(err, ErrDisconnected) || IsCode(err, "not_found") {
			err = nil // the server side ended with its connection
		}
	}
	st.sink.end(nil)
	return err
}
