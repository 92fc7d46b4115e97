package client

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// TaskHandler does one attempt of a task and returns its output (any
// value JSON can encode; a json.RawMessage is sent as is). An error fails
// the attempt: for good, unless it is marked with Retry. ctx ends when
// the cluster takes the task back (context.Cause is a *RevokedError) or
// when the worker stops.
type TaskHandler func(ctx context.Context, t *TaskAssignment) (output any, err error)

// retryError marks an error as temporary.
type retryError struct{ err error }

func (e *retryError) Error() string { return e.err.Error() }
func (e *retryError) Unwrap() error { return e.err }

// Retry marks a handler's error as temporary: the task is tried again
// after its backoff while it has attempts left.
func Retry(err error) error {
	if err == nil {
		return nil
	}
	return &retryError{err}
}

// IsRetry reports whether err was marked with Retry.
func IsRetry(err error) bool {
	var r *retryError
	return errors.As(err, &r)
}

// WorkOption tunes Work.
type WorkOption func(*workOptions)

type workOptions struct {
	meta any
}

// WithMeta sets the meta object of the worker's registration, which
// Agents shows (a model name, a version).
func WithMeta(meta any) WorkOption { return func(o *workOptions) { o.meta = meta } }

// taskSettleTimeout bounds the task.done or task.fail after a handler.
const taskSettleTimeout = 30 * time.Second

// Work registers caps and runs h for every task the cluster pushes to
// this client, each in its own goroutine, at most MaxInflight of a
// capability at once (the cluster never pushes more). It reports each
// outcome with task.done or task.fail, and cancels a handler's context
// when its task is taken back. Reconnects are handled underneath: the
// client registers again on every new connection, and a handler that was
// running when the connection dropped still settles its task on the new
// one.
//
// Work returns when ctx ends, after withdrawing the capabilities and
// waiting for the running handlers (their context ends too; an attempt
// that then fails is handed back for a retry), or with ErrClosed when the
// client closes. Run one Work per client at a time.
func (c *Client) Work(ctx context.Context, caps []Capability, h TaskHandler, opts ...WorkOption) error {
	if len(caps) == 0 {
		return errors.New("work: no capability given")
	}
	var o workOptions
	for _, f := range opts {
		f(&o)
	}
	sems := make(map[string]chan struct{}, len(caps))
	for _, cp := range caps {
		sems[cp.Name] = make(chan struct{}, max(cp.MaxInflight, 1))
	}
	tasks := c.Tasks()
	if err := c.Register(ctx, caps, o.meta); err != nil {
		return fmt.Errorf("work: %w", err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case a, ok := <-tasks:
			if !ok {
				return ErrClosed
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.runTask(ctx, a, sems[a.Capability], h)
			}()
		case <-ctx.Done():
			uctx, cancel := context.WithTimeout(context.Background(), taskSettleTimeout)
			if err := c.Unregister(uctx); err != nil && !errors.Is(err, ErrClosed) {
				c.log.Warn("work: cannot withdraw the capabilities", "err", err)
			}
			cancel()
			// Tasks pushed before the withdrawal go back at once.
			for {
				select {
				case a, ok := <-tasks:
					if ok {
						c.handBack(a, "the worker stopped")
						continue
					}
				default:
				}
				return nil
			}
		}
	}
}

// handBack fails an attempt the worker will not run, for a retry.
func (c *Client) handBack(a *TaskAssignment, why string) {
	ctx, cancel := context.WithTimeout(context.Background(), taskSettleTimeout)
	defer cancel()
	if err := a.Fail(ctx, why, true); err != nil && !errors.Is(err, ErrClosed) {
		c.log.Warn("work: cannot hand a task back", "task", a.ID, "attempt", a.Attempt, "err", err)
	}
}

// runTask runs one attempt and settles it.
func (c *Client) runTask(ctx context.Context, a *TaskAssignment, sem chan struct{}, h TaskHandler) {
	if sem != nil {
		select {
		case sem <- struct{}{}:
			defer func() { <-sem }()
		case <-a.ctx.Done():
			return // taken back while waiting
		case <-ctx.Done():
			c.handBack(a, "the worker stopped")
			return
		}
	}
	if a.ctx.Err() != nil {
		return
	}
	hctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(a.ctx, func() { cancel(context.Cause(a.ctx)) })
	defer stop()
	out, err := callHandler(hctx, h, a)
	if a.ctx.Err() != nil {
		return // taken back, settled by the handler itself, or the client closed
	}
	sctx, scancel := context.WithTimeout(context.Background(), taskSettleTimeout)
	defer scancel()
	if err == nil {
		err := a.Done(sctx, out)
		if IsCode(err, "bad_request") || IsCode(err, "too_large") {
			// The output was refused (too large, say): the attempt fails.
			err = a.Fail(sctx, "the output was refused: "+err.Error(), false)
		}
		if err != nil && !errors.Is(err, ErrClosed) {
			c.log.Warn("work: cannot report a task's output", "task", a.ID, "attempt", a.Attempt, "err", err)
		}
		return
	}
	retry := IsRetry(err) || ctx.Err() != nil
	if ferr := a.Fail(sctx, err.Error(), retry); ferr != nil && !errors.Is(ferr, ErrClosed) {
		c.log.Warn("work: cannot report a task's failure", "task", a.ID, "attempt", a.Attempt, "err", ferr)
	}
}

// callHandler runs h, turning a panic into a failure.
func callHandler(ctx context.Context, h TaskHandler, a *TaskAssignment) (out any, err error) {
	defer func() {
		if r := recover(); r != nil {
			out, err = nil, fmt.Errorf("the handler panicked: %v", r)
		}
	}()
	return h(ctx, a)
}
