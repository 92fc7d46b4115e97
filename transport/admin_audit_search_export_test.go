package transport

// SetAuditScanLimits sets how many entries one audit search reads at
// most, and one of its read transactions, until the returned func puts
// them back.
func SetAuditScanLimits(max, chunk int) (restore func()) {
	oldMax, oldChunk := auditScanMax.Swap(int64(max)), auditScanChunk.Swap(int64(chunk))
	return func() { auditScanMax.Store(oldMax); auditScanChunk.Store(oldChunk) }
}
