package fsm

// SetCommitHook makes every commit of state.db call h first; an error from
// h fails the commit the way a full disk would (the transaction is rolled
// back). nil removes the hook.
func SetCommitHook(f *FSM, h func() error) {
	if h == nil {
		f.commitHook.Store(nil)
		return
	}
	f.commitHook.Store(&h)
}
