package edge

// DropLiveRepublishes makes e lose the next n republished messages of
// durable rooms, as a NATS node failure or a stream leader change can.
func DropLiveRepublishes(e *Edge, n int32) { e.dur.dropLive.Store(n) }
