package transport

// SendQueuePeak reports the most frames and bytes any closed connection
// of s ever held in its send queue.
func SendQueuePeak(s *Server) (int, int64) {
	s.peakMu.Lock()
	defer s.peakMu.Unlock()
	return s.peak, s.peakB
}
