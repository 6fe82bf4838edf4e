// A test worker in Node, written from docs/protocol.md alone ("Answering
// requests from any language", "Writing a stream"): it answers the
// transport's two RPCs on natter.in.<type> in the queue group
// natter-workers, and writes each response as a Natter response stream with
// JetStream (open, chunks, rollup end), listening on
// natter.ctl.stream.<id> for pings and cancels. Lives outside test/
// because node --test runs every module below test/.
import { connect, headers } from "@nats-io/transport-node";
import { jetstream } from "@nats-io/jetstream";
import { randomUUID } from "node:crypto";

const enc = new TextEncoder();
const dec = new TextDecoder();

/**
 * Starts a worker on the NATS server at natsUrl. Options:
 *   sendType, resumeType  the RPC types (the transport's defaults)
 *   script(request)       what to write for a send: {chunks: string[],
 *                         delayMs (between chunks, default 5), holdAfter
 *                         (pause after this many chunks until release()),
 *                         error: {code, message} (end with an error instead
 *                         of done)}; settable later as worker.script
 * Returns the worker: {streams (Map id -> Producer), requests (payloads
 * received, with {type, user}), script, replyDelayMs (delays each send's
 * reply, after the open), latest(chatId), stop()}.
 */
export async function startWorker(natsUrl, { sendType = "ai.chat.send", resumeType = "ai.chat.resume", script } = {}) {
  const nc = await connect({ servers: natsUrl });
  const js = jetstream(nc);
  const streams = new Map();
  const byChat = new Map(); // chatId -> the latest Producer
  const requests = [];
  const worker = {
    nc,
    streams,
    requests,
    script: script ?? (() => ({ chunks: ["Hello", ", ", "world", "!"] })),
    /** A delay of every send's reply, after the stream is open. */
    replyDelayMs: 0,
    /** The latest stream written for chatId (undefined: none). */
    latest: (chatId) => byChat.get(chatId),
    async stop() {
      await nc.drain().catch(() => {});
    },
  };

  const reply = (msg, type, payload) => msg.respond(enc.encode(JSON.stringify({ type, payload })));
  const fail = (msg, code, message) => reply(msg, "RPC_ERROR", { code, message });

  nc.subscribe(`natter.in.${sendType}`, {
    queue: "natter-workers",
    callback: async (err, msg) => {
      if (err) return;
      const env = JSON.parse(dec.decode(msg.data));
      requests.push({ type: sendType, user: msg.headers?.get("Natter-User"), payload: env.payload });
      try {
        const p = await openStream(js, nc, msg, env.payload.chatId);
        streams.set(p.id, p);
        byChat.set(env.payload.chatId, p);
        // The open is stored before the reply: a join that follows finds it.
        if (worker.replyDelayMs) await new Promise((r) => setTimeout(r, worker.replyDelayMs));
        reply(msg, "ai.chat.stream", { stream: p.id });
        p.write(worker.script(env.payload));
      } catch (e) {
        fail(msg, "INTERNAL", String(e?.message ?? e));
      }
    },
  });
  nc.subscribe(`natter.in.${resumeType}`, {
    queue: "natter-workers",
    callback: (err, msg) => {
      if (err) return;
      const env = JSON.parse(dec.decode(msg.data));
      requests.push({ type: resumeType, user: msg.headers?.get("Natter-User"), payload: env.payload });
      // The response in progress, if any: a finished one is in the chat's
      // messages already (the AI SDK's meaning of resume).
      const p = byChat.get(env.payload.chatId);
      reply(msg, "ai.chat.stream", { stream: p && !p.isEnded ? p.id : null });
    },
  });
  await nc.flush();
  return worker;
}

/**
 * Opens a stream for the request msg: subscribes to its control subject,
 * stores the open (readers: the requesting user, else its connection), and
 * returns a Producer: {id, chatId, ctl (control ops received, in order),
 * text (written so far), written (chunks stored), cancelled, isEnded,
 * ended (Promise of {status, code?, seq}), write(script), release(),
 * waitWritten(n)}.
 */
async function openStream(js, nc, msg, chatId) {
  const id = randomUUID().replaceAll("-", "");
  const subject = `natter.stream.${id}`;
  const user = msg.headers?.get("Natter-User");
  const who = user ? ["Natter-Stream-User", user] : ["Natter-Stream-Conn", msg.headers.get("Natter-Conn")];
  let wake = () => {};
  let held = false;
  const waiters = [];
  let endResolve;
  const p = {
    id,
    chatId,
    ctl: [],
    text: "",
    written: 0,
    cancelled: false,
    isEnded: false,
    ended: new Promise((r) => (endResolve = r)),
    /** Ends a hold (holdAfter). */
    release() {
      held = false;
      wake();
    },
    /** Resolves once n chunks are stored (or the stream ended). */
    waitWritten(n) {
      if (p.written >= n || p.isEnded) return Promise.resolve();
      return new Promise((r) => waiters.push({ n, r }));
    },
    write: (script) => void produce(script).catch((e) => console.error(`worker: stream ${id}: ${e.stack ?? e}`)),
  };

  const ctl = nc.subscribe(`natter.ctl.stream.${id}`, {
    callback: (err, m) => {
      if (err) return;
      let op = "?";
      try { op = JSON.parse(dec.decode(m.data)).op; } catch { /* recorded as "?" */ }
      p.ctl.push(op);
      m.respond(enc.encode('{"ok":true}'));
      if (op === "cancel") {
        p.cancelled = true;
        wake();
      }
    },
  });
  await nc.flush();

  const hdrs = (kind, extra = []) => {
    const h = headers();
    h.set("Natter-Stream", kind);
    h.set(who[0], who[1]);
    for (const [k, v] of extra) h.set(k, v);
    return h;
  };
  let lastSeq = (await js.publish(subject, new Uint8Array(0), {
    headers: hdrs("open", [["Nats-Expected-Last-Subject-Sequence", "0"]]),
  })).seq;

  const sleep = (ms) => new Promise((r) => {
    const t = setTimeout(r, ms);
    wake = () => { clearTimeout(t); r(); };
  });

  async function produce({ chunks, delayMs = 5, holdAfter, error }) {
    let endHeaders;
    for (let n = 0; n < chunks.length; n++) {
      if (holdAfter !== undefined && n === holdAfter) held = true;
      while (held && !p.cancelled) await sleep(60_000);
      if (p.cancelled) break;
      await sleep(delayMs);
      if (p.cancelled) break;
      const ack = await js.publish(subject, enc.encode(chunks[n]), {
        msgID: `${id}.${n}`,
        headers: hdrs("chunk"),
      });
      lastSeq = ack.seq;
      p.text += chunks[n];
      p.written++;
      for (const w of waiters.splice(0)) {
        if (p.written >= w.n) w.r();
        else waiters.push(w);
      }
    }
    if (p.cancelled) {
      endHeaders = hdrs("error", [["Natter-Stream-Code", "CANCELLED"], ["Natter-Stream-Message", "stopped by the user"]]);
    } else if (error) {
      endHeaders = hdrs("error", [["Natter-Stream-Code", error.code], ["Natter-Stream-Message", error.message]]);
    } else {
      endHeaders = hdrs("done");
    }
    endHeaders.set("Nats-Rollup", "sub");
    endHeaders.set("Nats-Expected-Last-Subject-Sequence", String(lastSeq));
    let result;
    try {
      const ack = await js.publish(subject, enc.encode(p.text), { headers: endHeaders });
      result = { status: endHeaders.get("Natter-Stream"), code: endHeaders.get("Natter-Stream-Code") || undefined, seq: ack.seq };
    } catch (e) {
      // Refused: an edge ended the stream for us meanwhile.
      result = { status: "refused", error: String(e?.message ?? e) };
    }
    ctl.unsubscribe();
    p.isEnded = true;
    for (const w of waiters.splice(0)) w.r();
    endResolve(result);
  }
  return p;
}
