// Compile-time checks of the public API's types (npm run typecheck): the
// generated payload types apply to known types, unknown to the others.
import { connect, NatterError, type WebSocketConstructor, type RoomPage, type Position, type RecoveryInfo, type HistoryPage, type Accepted, type DurableOptions, type Schemas, type TransportName, type NatterStream, type StreamChunk, type StreamEnd } from "natter-client";
import { natterSchemas } from "natter-client/schemas";

const W: WebSocketConstructor = WebSocket; // the browser's constructor fits
const c = connect("ws://localhost:8080/ws", { WebSocket: W, token: async () => "t", reconnect: { maxDelayMs: 5000 } });

c.send("chat.send", { room: "general", text: "hi" });
// @ts-expect-error text is required by the chat.send schema
c.send("chat.send", { room: "general" });
c.send("anything.else", { free: ["form"] }); // unknown types take any payload

c.on("chat.message", (m, env) => {
  const text: string | undefined = m.text;
  const room: string | undefined = env.meta?.room;
  void text, room;
});
c.on("$joined", (p) => {
  const r: string = p.room;
  void r;
});
c.on("*", (p, env) => void [p, env.type]);
c.on("$connected", (p) => {
  const id: string = p.connectionId;
  const user: string | undefined = p.user;
  void id, user;
});
const connID: string | undefined = c.connectionId;
// @ts-expect-error undefined until the edge's $connected
const sure: string = c.connectionId;
void connID, sure;

const ac = new AbortController();
const sum: Promise<{ sum: number }> = c.rpc<"calc.add", { sum: number }>("calc.add", { a: 1 }, {
  signal: ac.signal,
  timeoutMs: 500,
  onProgress: (p) => void p,
});
void sum;
c.rpc("chat.send", { room: "r", text: "t" }).catch((e: unknown) => e instanceof NatterError && e.code === "INVALID_ARGUMENT");

c.handle("geo.where", async () => ({ type: "geo.position", payload: { lat: 52.5 } }));
c.handle("geo.where", () => {
  throw new NatterError("PERMISSION_DENIED", "no");
});

const page: Promise<RoomPage> = c.presence.room("general", { limit: 10 });
void page;
c.onPresence("general", (d) => d.joins.map((m) => m.user));
const off: () => void = c.onState((state, info) => void [state === "reconnecting", info?.code]);
off();

// Options and members added by the review fixes.
const paced = connect("ws://localhost:8080/ws", { sendRate: { perSecond: 50 }, heartbeatMs: 20_000, connectTimeoutMs: 5000 });
connect("ws://localhost:8080/ws", { sendRate: false });
const offError: () => void = paced.onError((e, info) => void [e.code, info.op === "join" && info.room, info.retrying]);
offError();

// Durable rooms: positions, recovery events, explicit since, history.
const at: Position | undefined = c.position("support-1");
void c.join("support-1", { since: { offset: 42, epoch: "e1" }, presence: true });
// @ts-expect-error a position needs its epoch
void c.join("support-1", { since: { offset: 42 } });
const offRecovery: () => void = c.onRecovery((info: RecoveryInfo) => {
  const gap: boolean = !info.recovered;
  const next: number = info.position.offset;
  void [gap, next, info.room, info.since.epoch, at];
});
offRecovery();
const hist: Promise<HistoryPage<{ text: string }>> = c.history<{ text: string }>("support-1", { limit: 50, before: 100, timeoutMs: 2000 });
void hist.then((h) => {
  const epoch: string = h.epoch;
  const more: boolean = h.more;
  const offset: number | undefined = h.messages[0]?.meta?.offset;
  const text: string | undefined = h.messages[0]?.payload?.text;
  void [epoch, more, offset, text];
});
c.on("$joined", (p) => void [p.durable, p.offset, p.epoch, p.recovered]);
c.on("chat.message", (_, env) => void [env.meta?.offset, env.meta?.epoch]);

// Durable messages: sendDurable resolves with {seq, duplicate}; rpc takes an idempotency key.
const durable: DurableOptions = { idempotencyKey: "order-17", timeoutMs: 60_000, signal: ac.signal };
const accepted: Promise<Accepted> = c.sendDurable("job.run", { order: 17 }, durable);
void accepted.then(({ seq, duplicate }) => {
  const n: number = seq;
  const again: boolean = duplicate;
  void [n, again];
});
void c.sendDurable("chat.send", { room: "r", text: "t" });
// @ts-expect-error text is required by the chat.send schema
void c.sendDurable("chat.send", { room: "r" });
// @ts-expect-error the key is a string
void c.sendDurable("job.run", {}, { idempotencyKey: 17 });
void c.rpc("job.run", {}, { idempotencyKey: "order-17", timeoutMs: 500 });
c.send("job.run", {}, { idempotencyKey: "order-17" });

// The binary wire and the fallback transports.
const schemas: Schemas = natterSchemas; // what natter-gen-ts writes fits the option
const order: TransportName[] = ["websocket", "sse"];
const pb = connect("ws://localhost:8080/ws", { wire: "protobuf", schemas, transports: order, wsConnectTimeoutMs: 2000, fallbackMemoryMs: 60_000, fetch });
pb.send("chat.send", { room: "general", text: "binary" });
connect("ws://localhost:8080/ws", { wire: "json", transports: ["sse"] });
// @ts-expect-error the wires are json and protobuf
connect("ws://localhost:8080/ws", { wire: "cbor" });
// @ts-expect-error the transports are websocket and sse
connect("ws://localhost:8080/ws", { transports: ["long-polling"] });
const offReceive: () => void = pb.onError((e, info) => void [e.code, info.op === "receive"]);
offReceive();
// A WebSocket of the client's own that takes text frames only still fits.
class TextOnly {
  readonly readyState = 0;
  send(data: string): void {
    void data;
  }
  close(): void {}
  addEventListener(): void {}
}
const T: WebSocketConstructor = TextOnly;
void T;

// Tracing, without @opentelemetry/api: off, and the W3C keys of meta.
connect("ws://localhost:8080/ws", { otel: false });
// @ts-expect-error the module or false
connect("ws://localhost:8080/ws", { otel: true });
c.on("chat.message", (_, env) => {
  const tp: string | undefined = env.meta?.traceparent;
  const ts: string | undefined = env.meta?.tracestate;
  void [tp, ts];
});
c.send("chat.send", { room: "r", text: "t" }, { traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" });

// Response streams: an async iterator of text chunks with their offsets.
async function readAnswer(id: string, saved: number): Promise<string> {
  const st: NatterStream = c.stream(id, { offset: saved, signal: ac.signal });
  let text = "";
  for await (const chunk of st) {
    const piece: StreamChunk = chunk;
    const at: number = piece.offset;
    text += piece.text;
    void at;
  }
  const end: StreamEnd = await st.ended;
  const code: string | undefined = end.error?.code;
  void code;
  // @ts-expect-error offsets are numbers
  c.stream(id, { offset: "12" });
  await st.cancel();
  st.leave();
  return text + (await c.stream(id).text());
}
void readAnswer;
