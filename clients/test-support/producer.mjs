// A response stream producer written with a plain NATS client
// (@nats-io/transport-node, @nats-io/jetstream) by following only
// "Writing a stream" in docs/protocol.md; the step numbers are the doc's.
// The tests run it as a process, so that they can kill it:
//
//   node producer.mjs <nats-url> <stream-id> user|room|conn <who>
//
// It opens the stream, then reads commands from stdin, one JSON per line:
// {"chunk": "text"} appends a chunk, {"done": true} ends the stream,
// {"error": {"code", "message"}} ends it with an error. It reports on
// stdout, one JSON per line: {"opened": seq}, {"stored": n, "seq": seq}
// (chunk n is stored), {"ctl": op} (a control request came), {"ended":
// "done"|"error", "seq": seq}, or {"failed": message}; it exits after
// the end is stored (or refused).
import { createInterface } from "node:readline";
import { connect, headers } from "@nats-io/transport-node";
import { jetstream } from "@nats-io/jetstream";

const [server, id, kind, who] = process.argv.slice(2);
const toHeader = { user: "Natter-Stream-User", room: "Natter-Stream-Room", conn: "Natter-Stream-Conn" }[kind];
if (!server || !id || !toHeader || !who) {
  console.error("usage: node producer.mjs <nats-url> <stream-id> user|room|conn <who>");
  process.exit(2);
}
const report = (v) => process.stdout.write(JSON.stringify(v) + "\n");

const nc = await connect({ servers: server });
const js = jetstream(nc);
const subject = `natter.stream.${id}`;

// Step 1: the id is the caller's (argv); the tests tell the readers.

let text = ""; // every chunk, concatenated: the body of the end
let chunks = 0; // for Nats-Msg-Id
let lastSeq = 0; // the sequence of the last message stored: the end expects it
let ending = false; // an end is written (done, error or cancelled): no more chunks
let work = Promise.resolve(); // one publish at a time, in the order asked

/** Runs fn after the publishes before it. */
const next = (fn) => (work = work.then(fn).catch((err) => {
  report({ failed: err.message });
  process.exit(1);
}));

// Step 2: listen for control before opening; answer every request
// {"ok":true}. "ping" only asks whether we are alive; "cancel" asks us to
// stop: reply, stop writing, end with CANCELLED (step 5).
const ctl = nc.subscribe(`natter.ctl.stream.${id}`, {
  callback: (err, msg) => {
    if (err) return;
    let op;
    try {
      op = msg.json().op;
    } catch {
      op = undefined;
    }
    msg.respond(JSON.stringify({ ok: true }));
    report({ ctl: op });
    if (op === "cancel") end("error", { code: "CANCELLED", message: "cancelled by a reader" });
  },
});
await nc.flush();

// Step 3: open: an empty body, who may read it, and "the id is new".
{
  const h = headers();
  h.set("Natter-Stream", "open");
  h.set(toHeader, who);
  h.set("Nats-Expected-Last-Subject-Sequence", "0");
  try {
    const ack = await js.publish(subject, new Uint8Array(0), { headers: h });
    lastSeq = ack.seq;
    report({ opened: ack.seq });
  } catch (err) {
    report({ failed: `open refused: ${err.message}` }); // a reused id: "wrong last sequence"
    process.exit(1);
  }
}

// Step 4: append chunks, each acknowledged before the next, each with a
// message id so that a retried publish is stored once.
function chunk(s) {
  next(async () => {
    if (ending || s === "") return;
    const n = ++chunks;
    const h = headers();
    h.set("Natter-Stream", "chunk");
    h.set("Nats-Msg-Id", `${id}.${n}`);
    const ack = await js.publish(subject, s, { headers: h });
    text += s;
    lastSeq = ack.seq;
    report({ stored: n, seq: ack.seq });
  });
}

// Step 5: end: the whole text, done or error, the same reader header as
// the open, a rollup of the subject, and the sequence of our last
// message: refused if an edge ended the stream for us meanwhile. Then
// unsubscribe from control.
function end(status, error) {
  if (ending) return;
  ending = true;
  next(async () => {
    const h = headers();
    h.set("Natter-Stream", status);
    if (status === "error") {
      h.set("Natter-Stream-Code", error.code);
      h.set("Natter-Stream-Message", error.message ?? "");
    }
    h.set(toHeader, who);
    h.set("Nats-Rollup", "sub");
    h.set("Nats-Expected-Last-Subject-Sequence", String(lastSeq));
    try {
      const ack = await js.publish(subject, text, { headers: h });
      report({ ended: status, seq: ack.seq });
    } catch (err) {
      report({ failed: `end refused: ${err.message}` });
    }
    ctl.unsubscribe();
    await nc.drain();
    process.exit(0);
  });
}

for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  const cmd = JSON.parse(line);
  if (typeof cmd.chunk === "string") chunk(cmd.chunk);
  else if (cmd.done) end("done");
  else if (cmd.error) end("error", cmd.error);
}
