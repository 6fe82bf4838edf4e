// The AI SDK's real chat (AbstractChat, test-support/chat.mjs) over
// NatterChatTransport, against a real edge process (its embedded NATS) and
// a worker in Node that writes response streams as docs/protocol.md says.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startEdge, until, waitState, withTimeout } from "../../test-support/edge.mjs";
import { connect } from "../.build/natter-client.js";
import { NatterChatTransport } from "../dist/index.js";
import { Chat, textOf } from "../test-support/chat.mjs";
import { startWorker } from "../test-support/worker.mjs";
import { startTcpProxy } from "../test-support/tcpproxy.mjs";

let edge;
let worker;
const clients = [];

before(async () => {
  edge = await startEdge();
  worker = await startWorker(edge.nats);
});

after(async () => {
  for (const c of clients) c.close();
  await worker?.stop();
  await edge?.stop();
});

let users = 0;
/** A client of a new user (or of user), closed after the tests. */
function client({ user = `u${++users}`, url = edge.url, ...options } = {}) {
  const c = connect(url, { user, reconnect: { initialDelayMs: 20, maxDelayMs: 200 }, ...options });
  clients.push(c);
  return c;
}

let chats = 0;
const newChatId = () => `chat-${++chats}-${Date.now()}`;

/** The assistant messages of a chat. */
const replies = (chat) => chat.messages.filter((m) => m.role === "assistant");

/** Waits until the chat's last message is the assistant's with text. */
function untilText(chat, text, what = `assistant text ${JSON.stringify(text)}`) {
  return until(() => chat.lastMessage?.role === "assistant" && textOf(chat.lastMessage) === text, 20_000, what);
}

/** The producer of the latest stream for chatId, once the worker started it. */
const producer = (chatId) => until(() => worker.latest(chatId), 20_000, `a stream for ${chatId}`);

/** Chunks with multi-byte UTF-8 characters, so that offsets (bytes) differ from string lengths. */
const CHUNKS = ["Grüß ", "dich", " — ", "ça va", " 🙂?", " Straße", " ✓", " end."];
const FULL = CHUNKS.join("");

test("a response streams into the assistant message, chunk by chunk, exactly", async () => {
  const user = `streamer${Date.now()}`;
  const chatId = newChatId();
  const chat = new Chat({ id: chatId, transport: new NatterChatTransport({ client: client({ user }) }) });
  worker.script = () => ({ chunks: CHUNKS, delayMs: 10 });
  const statuses = [];
  const seen = [];
  chat.state.onChange = () => {
    statuses.push(chat.status);
    const last = chat.lastMessage;
    if (last?.role === "assistant") seen.push(textOf(last));
  };
  await withTimeout(chat.sendMessage({ text: "Hallo" }), 20_000, "sendMessage");

  assert.equal(chat.status, "ready");
  assert.equal(chat.error, undefined);
  assert.equal(chat.messages.length, 2);
  const [question, reply] = chat.messages;
  assert.equal(question.role, "user");
  assert.equal(textOf(question), "Hallo");
  assert.equal(reply.role, "assistant");
  assert.equal(textOf(reply), FULL);
  const p = worker.latest(chatId);
  assert.equal(reply.id, p.id, "the assistant message's id is the stream's");
  assert.deepEqual(await p.ended, { status: "done", code: undefined, seq: (await p.ended).seq });
  // The text grew by whole chunks, in order (a frame may merge several).
  assert.ok(seen.length >= 2, `the text grew in steps: ${JSON.stringify(seen)}`);
  for (let i = 1; i < seen.length; i++) assert.ok(seen[i].startsWith(seen[i - 1]), `monotonic: ${JSON.stringify(seen)}`);

  // What the worker was asked.
  const req = worker.requests.find((r) => r.type === "ai.chat.send" && r.payload.chatId === chatId);
  assert.equal(req.payload.trigger, "submit-message");
  assert.equal(req.payload.messageId, undefined);
  assert.equal(req.payload.messages.length, 1);
  assert.equal(textOf(req.payload.messages[0]), "Hallo");
  assert.equal(req.user, user);
  assert.deepEqual(p.ctl.filter((op) => op === "cancel"), [], "no cancel");

  // A second turn: the history goes along, a new stream answers.
  worker.script = () => ({ chunks: ["second ", "answer"] });
  await withTimeout(chat.sendMessage({ text: "again" }), 20_000, "second sendMessage");
  assert.deepEqual(chat.messages.map((m) => [m.role, textOf(m)]),
    [["user", "Hallo"], ["assistant", FULL], ["user", "again"], ["assistant", "second answer"]]);
  const req2 = worker.requests.filter((r) => r.type === "ai.chat.send" && r.payload.chatId === chatId)[1];
  assert.equal(req2.payload.messages.length, 3);
});

test("a stream that ends with an error puts the chat in error with the producer's message", async () => {
  const chat = new Chat({ id: newChatId(), transport: new NatterChatTransport({ client: client() }) });
  worker.script = () => ({ chunks: ["partial"], error: { code: "INTERNAL", message: "the model fell over" } });
  await withTimeout(chat.sendMessage({ text: "hi" }), 20_000, "sendMessage");
  assert.equal(chat.status, "error");
  assert.equal(chat.error?.message, "the model fell over");
  assert.equal(textOf(chat.lastMessage), "partial", "the text before the error stays");
});

test("a WebSocket killed mid-stream: the client re-joins, the text is complete and exactly once", async () => {
  const proxy = await startTcpProxy(edge);
  try {
    const c = client({ url: proxy.url, transports: ["websocket"] });
    await waitState(c, "open");
    const chatId = newChatId();
    const chat = new Chat({ id: chatId, transport: new NatterChatTransport({ client: c }) });
    worker.script = () => ({ chunks: CHUNKS, delayMs: 5, holdAfter: 3 });
    const states = [];
    c.onState((s) => states.push(s));
    const sent = chat.sendMessage({ text: "drop me" });
    const p = await producer(chatId);
    await untilText(chat, CHUNKS.slice(0, 3).join(""), "the first three chunks");

    // Kill the socket and keep the client away while the producer writes on.
    proxy.refuse(true);
    proxy.drop();
    await until(() => states.includes("reconnecting"), 10_000, "the client notices the drop");
    p.release();
    await p.waitWritten(6);
    assert.equal(textOf(chat.lastMessage), CHUNKS.slice(0, 3).join(""), "nothing arrives while away");
    proxy.refuse(false);

    await withTimeout(sent, 20_000, "sendMessage");
    assert.ok(proxy.connections >= 2, "the client reconnected through the proxy");
    assert.equal(chat.status, "ready");
    assert.equal(chat.error, undefined);
    assert.equal(replies(chat).length, 1);
    assert.equal(textOf(chat.lastMessage), FULL);
    assert.equal((await p.ended).status, "done");
    assert.ok(!p.ctl.includes("cancel"));
  } finally {
    await proxy.close();
  }
});

test("stop() cancels the producer and keeps the text so far", async () => {
  const chatId = newChatId();
  const chat = new Chat({ id: chatId, transport: new NatterChatTransport({ client: client() }) });
  worker.script = () => ({ chunks: CHUNKS, delayMs: 5, holdAfter: 2 });
  const sent = chat.sendMessage({ text: "stop me" });
  const p = await producer(chatId);
  await untilText(chat, CHUNKS.slice(0, 2).join(""), "two chunks");

  await withTimeout(chat.stop(), 10_000, "stop");
  await withTimeout(sent, 10_000, "sendMessage after stop");
  const end = await withTimeout(p.ended, 10_000, "the producer's end");
  assert.deepEqual(p.ctl.filter((op) => op === "cancel"), ["cancel"], "the worker was told to cancel, once");
  assert.equal(end.status, "error");
  assert.equal(end.code, "CANCELLED");
  assert.equal(p.written, 2, "nothing written after the cancel");
  assert.equal(chat.status, "ready");
  assert.equal(textOf(chat.lastMessage), CHUNKS.slice(0, 2).join(""));
});

test("stop() before the worker answered still cancels the stream it starts", async () => {
  const chatId = newChatId();
  const chat = new Chat({ id: chatId, transport: new NatterChatTransport({ client: client() }) });
  worker.script = () => ({ chunks: CHUNKS, delayMs: 5, holdAfter: 1 });
  worker.replyDelayMs = 300; // the stream is open, the reply not yet sent
  try {
    const sent = chat.sendMessage({ text: "quick stop" });
    await until(() => chat.status === "submitted", 10_000, "submitted");
    await withTimeout(chat.stop(), 10_000, "stop");
    await withTimeout(sent, 10_000, "sendMessage after stop");
    assert.equal(chat.status, "ready");
    assert.deepEqual(chat.messages.map((m) => m.role), ["user"], "no reply was read");
    const p = await producer(chatId);
    const end = await withTimeout(p.ended, 10_000, "the producer's end");
    assert.equal(end.code, "CANCELLED");
  } finally {
    worker.replyDelayMs = 0;
  }
});

test("resumeStream() after a reload reads the whole response from the start, once", async () => {
  const user = `reload${Date.now()}`;
  const chatId = newChatId();
  worker.script = () => ({ chunks: CHUNKS, delayMs: 5, holdAfter: 3 });

  const before = client({ user });
  const chat1 = new Chat({ id: chatId, transport: new NatterChatTransport({ client: before }) });
  void chat1.sendMessage({ text: "survive a reload" }).catch(() => {});
  const p = await producer(chatId);
  await untilText(chat1, CHUNKS.slice(0, 3).join(""), "three chunks before the reload");
  // The page goes away: its socket closes, nothing is cancelled.
  const persisted = structuredClone(chat1.messages); // the app saved the partial reply too
  before.close();

  // After the reload: a new client of the same user, a new Chat of the same id.
  const after = client({ user });
  const chat2 = new Chat({ id: chatId, messages: persisted, transport: new NatterChatTransport({ client: after }) });
  const resumed = chat2.resumeStream();
  await untilText(chat2, CHUNKS.slice(0, 3).join(""), "the text so far, replayed");
  p.release();
  await withTimeout(resumed, 20_000, "resumeStream");
  assert.equal(chat2.status, "ready");
  assert.equal(chat2.error, undefined);
  assert.deepEqual(chat2.messages.map((m) => [m.role, textOf(m)]), [["user", "survive a reload"], ["assistant", FULL]]);
  assert.equal(chat2.lastMessage.id, persisted[1].id, "the persisted partial reply was replaced, not duplicated");
  assert.ok(!p.ctl.includes("cancel"), "the reload cancelled nothing");
  const resume = worker.requests.find((r) => r.type === "ai.chat.resume" && r.payload.chatId === chatId);
  assert.equal(resume.user, user);
});

test("resumeStream() with only the user's message saved appends the whole reply", async () => {
  const user = `reload-b${Date.now()}`;
  const chatId = newChatId();
  worker.script = () => ({ chunks: CHUNKS, delayMs: 5, holdAfter: 4 });
  const before = client({ user });
  const chat1 = new Chat({ id: chatId, transport: new NatterChatTransport({ client: before }) });
  void chat1.sendMessage({ text: "saved before the reply" }).catch(() => {});
  const p = await producer(chatId);
  await p.waitWritten(4);
  const persisted = structuredClone(chat1.messages.filter((m) => m.role === "user"));
  before.close();

  const chat2 = new Chat({ id: chatId, messages: persisted, transport: new NatterChatTransport({ client: client({ user }) }) });
  const resumed = chat2.resumeStream();
  p.release();
  await withTimeout(resumed, 20_000, "resumeStream");
  assert.equal(chat2.status, "ready");
  assert.deepEqual(chat2.messages.map((m) => [m.role, textOf(m)]), [["user", "saved before the reply"], ["assistant", FULL]]);
});

test("resumeStream() called twice in a row: the second replaces the first, nothing is cancelled", async () => {
  const user = `twice${Date.now()}`;
  const chatId = newChatId();
  worker.script = () => ({ chunks: CHUNKS, delayMs: 5, holdAfter: 2 });
  const before = client({ user });
  const chat1 = new Chat({ id: chatId, transport: new NatterChatTransport({ client: before }) });
  void chat1.sendMessage({ text: "twice" }).catch(() => {});
  const p = await producer(chatId);
  await p.waitWritten(2);
  const persisted = structuredClone(chat1.messages.filter((m) => m.role === "user"));
  before.close();

  const chat2 = new Chat({ id: chatId, messages: persisted, transport: new NatterChatTransport({ client: client({ user }) }) });
  const first = chat2.resumeStream();
  await untilText(chat2, CHUNKS.slice(0, 2).join(""), "the first resume reads");
  const second = chat2.resumeStream(); // as a remounted component would
  await untilText(chat2, CHUNKS.slice(0, 2).join(""), "the second resume reads");
  p.release();
  await withTimeout(Promise.all([first, second]), 20_000, "both resumes");
  assert.ok(!p.ctl.includes("cancel"), `the producer was not cancelled: ${JSON.stringify(p.ctl)}`);
  assert.equal((await p.ended).status, "done");
  assert.equal(chat2.status, "ready");
  assert.deepEqual(chat2.messages.map((m) => [m.role, textOf(m)]), [["user", "twice"], ["assistant", FULL]]);
});

test("resumeStream() with no response in progress changes nothing", async () => {
  const chat = new Chat({ id: newChatId(), transport: new NatterChatTransport({ client: client() }) });
  await withTimeout(chat.resumeStream(), 10_000, "resumeStream");
  assert.equal(chat.status, "ready");
  assert.deepEqual(chat.messages, []);
});

test("a resumed stream is cancelled by stop()", async () => {
  const user = `stop-resumed${Date.now()}`;
  const chatId = newChatId();
  worker.script = () => ({ chunks: CHUNKS, delayMs: 5, holdAfter: 2 });
  const before = client({ user });
  const chat1 = new Chat({ id: chatId, transport: new NatterChatTransport({ client: before }) });
  void chat1.sendMessage({ text: "stop the resumed" }).catch(() => {});
  const p = await producer(chatId);
  await p.waitWritten(2);
  before.close();
  const chat2 = new Chat({ id: chatId, messages: [], transport: new NatterChatTransport({ client: client({ user }) }) });
  const resumed = chat2.resumeStream();
  await untilText(chat2, CHUNKS.slice(0, 2).join(""), "the resumed text");
  await chat2.stop();
  await withTimeout(resumed, 10_000, "resumeStream after stop");
  assert.equal((await withTimeout(p.ended, 10_000, "the end")).code, "CANCELLED");
  assert.deepEqual(p.ctl.filter((op) => op === "cancel"), ["cancel"]);
});

test("another user cannot resume someone's stream", async () => {
  const chatId = newChatId();
  worker.script = () => ({ chunks: CHUNKS, delayMs: 5, holdAfter: 1 });
  const owner = new Chat({ id: chatId, transport: new NatterChatTransport({ client: client() }) });
  void owner.sendMessage({ text: "mine" }).catch(() => {});
  const p = await producer(chatId);
  await p.waitWritten(1);
  // The test worker answers any user with the chat's stream; the edge checks who may read it.
  const other = new Chat({ id: chatId, transport: new NatterChatTransport({ client: client() }) });
  await withTimeout(other.resumeStream(), 10_000, "resumeStream");
  assert.equal(other.status, "error");
  assert.match(other.error?.message ?? "", /permission|not allowed|may not|denied/i, `refused: ${other.error?.message}`);
  p.release();
  await p.ended;
});

test("regenerate() and request options: the worker gets the trigger, the message id and the body", async () => {
  const chatId = newChatId();
  const chat = new Chat({ id: chatId, transport: new NatterChatTransport({ client: client() }) });
  worker.script = () => ({ chunks: ["one"] });
  await withTimeout(chat.sendMessage({ text: "q" }, { body: { model: "small" }, metadata: { n: 1 } }), 20_000, "sendMessage");
  const sent = worker.requests.filter((r) => r.payload.chatId === chatId);
  assert.deepEqual(sent[0].payload.body, { model: "small" });
  assert.deepEqual(sent[0].payload.metadata, { n: 1 });
  const replyId = chat.lastMessage.id;

  worker.script = () => ({ chunks: ["two"] });
  await withTimeout(chat.regenerate({ messageId: replyId }), 20_000, "regenerate");
  const again = worker.requests.filter((r) => r.payload.chatId === chatId)[1];
  assert.equal(again.payload.trigger, "regenerate-message");
  assert.equal(again.payload.messageId, replyId);
  assert.equal(again.payload.messages.length, 1, "the history without the reply being regenerated");
  assert.equal(again.payload.body, undefined, "no body: the key is absent");
  assert.deepEqual(chat.messages.map((m) => [m.role, textOf(m)]), [["user", "q"], ["assistant", "two"]]);
});

test("no worker for the type: the chat is in error with the edge's UNAVAILABLE", async () => {
  const chat = new Chat({ id: newChatId(), transport: new NatterChatTransport({ client: client(), sendType: "ai.nobody.send" }) });
  await withTimeout(chat.sendMessage({ text: "anyone?" }), 20_000, "sendMessage");
  assert.equal(chat.status, "error");
  assert.equal(chat.error?.code, "UNAVAILABLE");
});

test("a reply that names no stream fails the request", async () => {
  const sub = worker.nc.subscribe("natter.in.ai.bad.send", {
    queue: "natter-workers",
    callback: (_, m) => m.respond(new TextEncoder().encode(JSON.stringify({ type: "ai.chat.stream", payload: { nope: 1 } }))),
  });
  await worker.nc.flush();
  try {
    const chat = new Chat({ id: newChatId(), transport: new NatterChatTransport({ client: client(), sendType: "ai.bad.send" }) });
    await withTimeout(chat.sendMessage({ text: "?" }), 20_000, "sendMessage");
    assert.equal(chat.status, "error");
    assert.match(chat.error?.message ?? "", /not \{stream: id \| null\}/);
  } finally {
    sub.unsubscribe();
  }
});

test("another tab of the same user follows the answer; stop() in the first ends it there as CANCELLED", async () => {
  const user = `tabs${Date.now()}`;
  const chatId = newChatId();
  worker.script = () => ({ chunks: CHUNKS, delayMs: 5, holdAfter: 2 });
  const tab1 = new Chat({ id: chatId, transport: new NatterChatTransport({ client: client({ user }) }) });
  const sent = tab1.sendMessage({ text: "two tabs" });
  const p = await producer(chatId);
  await untilText(tab1, CHUNKS.slice(0, 2).join(""), "tab 1 reads");
  const tab2 = new Chat({ id: chatId, messages: structuredClone(tab1.messages.slice(0, 1)), transport: new NatterChatTransport({ client: client({ user }) }) });
  const resumed = tab2.resumeStream();
  await untilText(tab2, CHUNKS.slice(0, 2).join(""), "tab 2 reads");
  await tab1.stop();
  await withTimeout(Promise.all([sent, resumed]), 20_000, "both tabs settle");
  assert.equal((await p.ended).code, "CANCELLED");
  assert.equal(tab1.status, "ready");
  assert.equal(tab2.status, "error");
  assert.equal(tab2.error?.message, "stopped by the user");
  assert.equal(textOf(tab2.lastMessage), CHUNKS.slice(0, 2).join(""));
});

test("a resume answered with a stream that has ended replays it into the same message", async () => {
  const user = `ended${Date.now()}`;
  const chatId = newChatId();
  worker.script = () => ({ chunks: CHUNKS });
  const chat1 = new Chat({ id: chatId, transport: new NatterChatTransport({ client: client({ user }) }) });
  await withTimeout(chat1.sendMessage({ text: "done already" }), 20_000, "sendMessage");
  const p = worker.latest(chatId);
  assert.equal((await p.ended).status, "done");
  // A worker that names the chat's last stream even after its end.
  const sub = worker.nc.subscribe("natter.in.ai.ended.resume", {
    queue: "natter-workers",
    callback: (_, m) => m.respond(new TextEncoder().encode(JSON.stringify({ type: "ai.chat.stream", payload: { stream: p.id } }))),
  });
  await worker.nc.flush();
  try {
    for (const saved of [structuredClone(chat1.messages), structuredClone(chat1.messages.slice(0, 1))]) {
      const chat2 = new Chat({ id: chatId, messages: saved, transport: new NatterChatTransport({ client: client({ user }), resumeType: "ai.ended.resume" }) });
      await withTimeout(chat2.resumeStream(), 20_000, "resumeStream");
      assert.equal(chat2.status, "ready");
      assert.deepEqual(chat2.messages.map((m) => [m.id, m.role, textOf(m)]), chat1.messages.map((m) => [m.id, m.role, textOf(m)]));
    }
  } finally {
    sub.unsubscribe();
  }
});

test("resumeStream() while the same chat still reads the answer: the newer read takes over, the text is once", async () => {
  const chatId = newChatId();
  worker.script = () => ({ chunks: CHUNKS, delayMs: 5, holdAfter: 3 });
  const chat = new Chat({ id: chatId, transport: new NatterChatTransport({ client: client() }) });
  const sent = chat.sendMessage({ text: "read twice" });
  const p = await producer(chatId);
  await untilText(chat, CHUNKS.slice(0, 3).join(""), "three chunks");
  const resumed = chat.resumeStream(); // as a remounted component with resume: true would
  await until(() => worker.requests.some((r) => r.type === "ai.chat.resume" && r.payload.chatId === chatId), 10_000, "the resume request");
  await untilText(chat, CHUNKS.slice(0, 3).join(""), "the replay");
  p.release();
  await withTimeout(Promise.all([sent, resumed]), 20_000, "both requests");
  assert.equal(chat.status, "ready");
  assert.equal(chat.error, undefined);
  assert.deepEqual(chat.messages.map((m) => [m.role, textOf(m)]), [["user", "read twice"], ["assistant", FULL]]);
  assert.ok(!p.ctl.includes("cancel"));
});
