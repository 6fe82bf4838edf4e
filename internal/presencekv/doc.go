// Package presencekv keeps Natter's presence in JetStream KV and derives the
// lifecycle events from it: the edge's side of presence, which the edge
// starts when presence is on. The public contract (entries, events,
// queries) is pkg/presence, which this package imports as presence.
// docs/design/presence.md gives the design, its failure cases and its
// cost.
//
// The bucket holds two kinds of keys. Each edge holds a lease, edge.<id>,
// a key with a per-key TTL that it refreshes every TTL/3. Each connection
// has a key conn.<id>, written without a TTL by its edge on connect, join,
// leave, state change and disconnect, and never rewritten while nothing
// changes: the steady-state cost is O(edges), not O(connections). When an
// edge's lease expires (crash, partition), every watcher sees the expiry as
// a purge, and the other edges delete its connections' keys, each delete
// conditional on the revision the deleting edge's copy holds, so that one
// delete wins and a key the edge has written since survives. An edge that
// finds its lease lapsed takes it again and rewrites its connections' keys.
//
// A removed connection's key is a delete marker without a rollup, so that a
// watcher that lags still sees the connection's last writes before it; a
// lease TTL later, the marker and those writes are purged with a rollup
// whose own marker expires after a TTL.
//
// Every edge watches the whole bucket and keeps a copy of it in memory (the
// mirror), from which it answers queries, derives events and room diffs,
// and decides what to remove.
//
// Exactly-once events: all mirrors see the bucket's changes in the same
// order (a KV bucket is one stream), so from the same change every edge
// derives the same events. Each edge publishes them to
// <prefix>.evtq.<event> with a Nats-Msg-Id made of the change's revision;
// the stream <prefix>_events drops the duplicates and republishes the one
// stored copy to <prefix>.evt.<event>. So an event is delivered once
// whatever the number of edges, including the offline that follows a
// crash, whichever edge's delete removed the key.
//
// Concurrency: Service methods are safe for concurrent use. The mirror is
// updated by one goroutine (the watcher); readers take its RWMutex. The
// lease, the retries of failed writes and the removals are the work of one
// goroutine (the keeper). Two routine.Groups own the service's goroutines:
// one the watcher, the event publisher and the diff flusher, the other the
// keeper, which Stop ends first (before the lease goes) and waits for;
// nothing polls. Lock order: ownMu before dirtyMu; mu (the
// mirror) is never held while another lock is taken, nor across a NATS
// round trip.
package presencekv
