package edge

// DropLiveRepublishes makes e lose the next n republished messages of
// durable rooms, as a NATS node failure or a stream leader change can.
func DropLiveRepublishes(e *Edge, n int32) { e.dur.dropLive.Store(n) }

// FailBackfills makes e's next n attempts to fill a hole fail, as they do
// while the stream elects a leader.
func FailBackfills(e *Edge, n int32) { e.dur.failFetch.Store(n) }

// SetCheckFrames turns the frame header checks off (or back on) for every
// edge of the test binary, to reach a panic inside gws.
func SetCheckFrames(on bool) { skipFrameChecks.Store(!on) }

// DropLiveStreamMessages makes e lose the next n live messages of
// response streams, as a lost republish would.
func DropLiveStreamMessages(e *Edge, n int32) { e.streams.dropLive.Store(n) }

// StreamEndRuns returns how many times e read a stream to end it for a
// producer that is gone.
func StreamEndRuns(e *Edge) int64 { return e.streams.endRuns.Load() }
