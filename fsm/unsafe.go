package fsm

// SetUnsafeNoSync stops state.db from ever being fsynced. It exists only for
// the fault suite's self-test (serve --test-unsafe-no-fsync): a deliberately
// broken build whose acknowledged messages a power loss destroys, which the
// suite must notice. A snapshot restore opens a new file and ends it.
func (f *FSM) SetUnsafeNoSync() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.db.NoSync = true
	f.db.NoGrowSync = true
}
