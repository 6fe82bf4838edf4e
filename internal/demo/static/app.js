// The Natter demo: one connection, a few rooms, messages, who is online and
// who is typing, and an "assistant" room whose long answers are response
// streams that survive reloads and reach every tab. Plain DOM, no
// framework; every user-supplied string goes through textContent.
import { connect } from "./natter.js";

const ASSISTANT = "assistant"; // the room of the built-in assistant worker (internal/assistant)
const DEFAULT_ROOMS = ["general", "random", ASSISTANT];
const ROOM_KEY = "natter-demo-room"; // sessionStorage: the room on screen, kept across a reload of this tab
const ID = /^[A-Za-z0-9_-]{1,128}$/; // user and room ids (docs/protocol.md)
const TYPING_IDLE_MS = 3000; // typing state clears after this long without a keystroke
const MAX_MESSAGES = 500; // per room, oldest dropped

const el = (id) => document.querySelector(`[data-testid="${id}"]`);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---- state ----------------------------------------------------------------

let client;
/** @type {Map<string, Room>} rooms in the list, joined or not */
const rooms = new Map();
let current = null; // name of the room on screen
let typingIn = null; // room our presence state says we type in, or null
let typingTimer;
let everOpen = false;
let following = true; // the message list was at its end before this frame's new messages: scroll there again
let scrollQueued = false; // a frame callback will scroll the message list (if following)
/** @type {Map<string, Message>} the assistant's answers on the page, by stream id */
const answers = new Map();
const me = new URLSearchParams(location.search).get("user");

/**
 * @typedef {{conn: string, user?: string, state?: any}} Member
 * @typedef {{user: string, text: string, ts: number, mine?: boolean, status?: string, notice?: boolean,
 *   recovery?: "recovered" | "gap", node?: Element,
 *   answer?: {id: string, question: string, stream?: any, textNode?: Text}}} Message
 *   An answer's status is "streaming", "done", "cancelled" or "error" (msg.error says which).
 * @typedef {{name: string, custom: boolean, joined: boolean, joining?: Promise<void>,
 *   members: Map<string, Member>, more: number, messages: Message[], unread: number,
 *   offPresence?: () => void}} Room
 */

// login asks for a name and reloads the page with ?user=<name>.
function login(bad) {
  const form = el("login-form");
  form.hidden = false;
  if (bad) showError(`"${bad}" is not a valid name: use 1-128 letters, digits, _ or -.`);
  form.user.focus();
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const name = form.user.value.trim();
    if (!ID.test(name)) return showError("Use 1-128 letters, digits, _ or -.");
    location.search = "?" + new URLSearchParams({ user: name });
  });
}

function start(user) {
  el("me").textContent = user;
  el("me").hidden = false;
  el("switch-user").hidden = false;
  el("chat").hidden = false;

  // The edge writes its --path into this meta tag.
  const path = document.querySelector('meta[name="natter-ws-path"]')?.content || "/ws";
  const wsURL = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + path;
  client = connect(wsURL, { user });
  showState(client.state);
  globalThis.natter = client; // for the console: natter.rpc("echo", {hi: 1}).then(console.log)
  client.onState((state, info) => {
    showState(state, info);
    if (state !== "open") return;
    if (everOpen) afterReconnect();
    everOpen = true;
  });
  client.on("chat.message", receive);
  client.on("assistant.answer", follow);
  client.onRecovery(recovery);

  for (const name of DEFAULT_ROOMS) addRoom(name, false);
  const saved = remembered();
  show(saved && ID.test(saved) ? saved : DEFAULT_ROOMS[0]);
  wireForms();
}

/** @returns {Room} */
function addRoom(name, custom) {
  let room = rooms.get(name);
  if (!room) {
    room = { name, custom, joined: false, members: new Map(), more: 0, messages: [], unread: 0 };
    rooms.set(name, room);
    renderRooms();
  }
  return room;
}

// show puts a room on screen, joining it first if needed.
function show(name) {
  const room = addRoom(name, !DEFAULT_ROOMS.includes(name));
  if (current !== name) stopTyping();
  current = name;
  remember(name);
  room.unread = 0;
  renderRooms();
  renderRoom();
  const joining = join(room);
  if (name === ASSISTANT) {
    // Whatever the assistant is writing now (or wrote last): after a
    // reload, or when it began while we were elsewhere.
    Promise.resolve(joining).then(() => room.joined && loadCurrent());
    el("question-input").focus();
  } else {
    el("message-input").focus();
  }
}

// remember keeps the room on screen for a reload of this tab.
function remember(name) {
  try {
    sessionStorage.setItem(ROOM_KEY, name);
  } catch {} // storage off: a reload shows the first room
}

function remembered() {
  try {
    return sessionStorage.getItem(ROOM_KEY);
  } catch {
    return null;
  }
}

// join joins a room with presence diffs and loads its member list. The
// client sends the join once the connection is open, and again after every
// reconnect.
function join(room) {
  if (room.joined || room.joining) return room.joining;
  room.joining = (async () => {
    room.offPresence ??= client.onPresence(room.name, (diff) => applyDiff(room, diff));
    await client.join(room.name, { presence: true });
    room.joined = true;
    await loadMembers(room);
  })()
    .catch((err) => {
      if (rooms.get(room.name) === room) showError(`Could not join ${room.name}: ${describe(err)}`); // else: left meanwhile
    })
    .finally(() => {
      room.joining = undefined;
      renderRooms();
    });
  return room.joining;
}

async function leave(room) {
  room.offPresence?.();
  rooms.delete(room.name);
  if (current === room.name) show(DEFAULT_ROOMS[0]);
  renderRooms();
  try {
    await client.leave(room.name);
  } catch (err) {
    showError(`Could not leave ${room.name}: ${describe(err)}`);
  }
}

// loadMembers replaces a room's member list with the edge's current page,
// retrying a few times (the connection may drop meanwhile). The page may
// have been read before a diff that arrives while it is on its way (a
// member who joined meanwhile), so the diffs received during the load are
// applied again on top of it, in order: each says a connection's last
// change, so one the page already holds changes nothing.
async function loadMembers(room) {
  const during = [];
  (room.loads ??= new Set()).add(during);
  try {
    await loadPage(room, during);
  } finally {
    room.loads.delete(during);
  }
}

async function loadPage(room, during) {
  for (let attempt = 0; ; attempt++) {
    try {
      const page = await client.presence.room(room.name);
      room.members = new Map(page.members.map((m) => [m.conn, m]));
      for (const diff of during) applyTo(room.members, diff);
      room.more = page.next ? page.count - page.members.length : 0; // beyond the first page: not listed
      if (room.name === current) renderPresence();
      return;
    } catch (err) {
      if (attempt >= 5 || !rooms.has(room.name)) throw err;
      await sleep(200 * 2 ** attempt);
    }
  }
}

// afterReconnect re-reads the member lists: diffs sent while the connection
// was down are lost, and our own connection is a new one. (The client has
// re-joined the rooms and re-sent our presence state before it says "open".)
function afterReconnect() {
  for (const room of rooms.values()) {
    if (room.joined) notice(room, "reconnected");
    if (room.joined) loadMembers(room).catch((err) => showError(`Could not reload ${room.name}: ${describe(err)}`));
  }
  // An answer announced while we were away; those we read, the client
  // re-joins itself from the last offset seen.
  if (rooms.get(ASSISTANT)?.joined) loadCurrent();
}

// applyDiff applies a $presence.diff: each connection appears once, as its
// last change made it.
function applyDiff(room, diff) {
  const before = usersOf(room);
  applyTo(room.members, diff);
  for (const during of room.loads ?? []) during.push(diff);
  const after = usersOf(room);
  for (const u of after.keys()) if (!before.has(u) && u !== me) notice(room, `${u} joined`);
  for (const u of before.keys()) if (!after.has(u) && u !== me) notice(room, `${u} left`);
  if (room.name === current) renderPresence();
}

function applyTo(members, diff) {
  for (const m of diff.joins ?? []) members.set(m.conn, m);
  for (const m of diff.states ?? []) members.set(m.conn, m);
  for (const m of diff.leaves ?? []) members.delete(m.conn);
}

// ---- messages -------------------------------------------------------------

function receive(payload) {
  const room = rooms.get(payload.room);
  if (!room) return;
  add(room, { user: payload.user || "anonymous", text: payload.text, ts: payload.ts });
}

function notice(room, text, recovery) {
  add(room, { user: "", text, ts: Date.now(), notice: true, recovery });
}

// recovery reports the re-join of a durable room (an edge started with
// --durable-rooms): the edge replayed what the room got while we were away,
// before this call, or could not (too old, or history was reset).
function recovery({ room: name, recovered }) {
  const room = rooms.get(name);
  if (!room) return;
  if (recovered) notice(room, "caught up: every message sent while away was replayed", "recovered");
  else notice(room, "some messages sent while away are missing (too old, or history was reset)", "gap");
}

function add(room, msg) {
  room.messages.push(msg);
  if (room.messages.length > MAX_MESSAGES) forget(room.messages.shift());
  if (room.name === current) {
    appendMessage(msg);
  } else if (!msg.notice) {
    room.unread++;
    renderRooms();
  }
}

// send shows the message at once (the chat worker does not echo it back to
// the sender) and marks it sent or failed when the worker answers.
async function send(text) {
  const room = rooms.get(current);
  const msg = { user: me, text, ts: Date.now(), mine: true, status: "sending" };
  add(room, msg);
  stopTyping();
  try {
    await join(room);
    const reply = await client.rpc("chat.send", { room: room.name, text }, { timeoutMs: 5000 });
    msg.status = "sent";
    msg.ts = reply?.ts ?? msg.ts; // chat.sent {ts}: the worker's clock, as others see it
  } catch (err) {
    msg.status = "failed";
    msg.error = describe(err);
  }
  if (msg.node) renderMessage(msg, msg.node);
}

function forget(msg) {
  msg.node?.remove();
  if (!msg.answer) return;
  answers.delete(msg.answer.id);
  msg.answer.stream?.leave();
}

// ---- the assistant ----------------------------------------------------------
//
// The assistant worker writes each answer into a response stream readable
// by the room's members, and announces it to the room ("assistant.answer").
// The page reads every answer it learns of from offset 0: the client hands
// the text out in order, and after a reconnect re-joins from the last
// offset it saw, so each answer shows whole and once.

// ask sends a question; the answer shows when its announcement (or the
// reply, whichever comes first) names its stream.
async function ask(question) {
  const room = rooms.get(ASSISTANT);
  try {
    await join(room);
    const reply = await client.rpc("assistant.ask", { question }, { timeoutMs: 10_000 });
    follow({ stream: reply.stream, question, user: me });
  } catch (err) {
    showError(`The assistant did not take the question: ${describe(err)}`);
    el("question-input").value ||= question;
  }
}

// loadCurrent follows the answer the assistant writes now, or wrote last.
async function loadCurrent() {
  try {
    const cur = await client.rpc("assistant.current", {}, { timeoutMs: 10_000 });
    if (cur?.stream) follow(cur);
  } catch (err) {
    showError(`Could not ask the assistant what it is writing: ${describe(err)}`);
  }
}

// follow shows the answer of stream (once per stream) and reads it.
function follow({ stream: id, question, user }) {
  if (typeof id !== "string" || answers.has(id)) return;
  const msg = { user: user || "anonymous", text: "", ts: Date.now(), status: "streaming", answer: { id, question: question ?? "" } };
  answers.set(id, msg);
  add(addRoom(ASSISTANT, false), msg);
  read(msg);
}

async function read(msg) {
  const a = msg.answer;
  const stream = (a.stream = client.stream(a.id));
  try {
    for await (const chunk of stream) {
      msg.text += chunk.text;
      a.textNode?.appendData(chunk.text);
      if (current === ASSISTANT) queueScroll();
    }
    const end = await stream.ended; // rejects when left (dropped from the page)
    msg.status = end.status === "done" ? "done" : "error";
  } catch (err) {
    msg.status = err?.code === "CANCELLED" ? "cancelled" : "error";
    msg.error = describe(err);
  }
  a.stream = undefined;
  if (msg.node) renderAnswer(msg, msg.node);
}

// stop asks the assistant to stop writing: every reader gets the end
// CANCELLED, and the answer so far.
async function stop(msg) {
  try {
    await msg.answer.stream?.cancel();
  } catch (err) {
    showError(`Could not stop the answer: ${describe(err)}`);
    if (msg.node && msg.status === "streaming") renderAnswer(msg, msg.node); // the stop button again
  }
}

// ---- typing ---------------------------------------------------------------

function typing() {
  if (el("message-input").value.trim() === "") return stopTyping();
  if (typingIn !== current) {
    typingIn = current;
    setState({ typing: current });
  }
  clearTimeout(typingTimer);
  typingTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
}

function stopTyping() {
  clearTimeout(typingTimer);
  if (typingIn === null) return;
  typingIn = null;
  setState(null);
}

function setState(state) {
  // Best effort: the client re-sends the last state after a reconnect, and
  // a lost update costs only a typing hint.
  client.presence.setState(state).catch(() => {});
}

// ---- rendering ------------------------------------------------------------

function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k.startsWith("data-") || k === "title" || k === "aria-label") node.setAttribute(k, v);
    else if (k === "hue") node.style.setProperty("--hue", v); // CSSOM: allowed by the page's CSP
    else node[k] = v;
  }
  node.append(...children.filter((c) => c != null));
  return node;
}

function renderRooms() {
  const list = el("room-list");
  list.replaceChildren(
    ...[...rooms.values()].map((room) =>
      h(
        "li",
        { className: room.name === current ? "current" : "" },
        h(
          "button",
          { type: "button", "data-testid": "room", "data-room": room.name, onclick: () => show(room.name) },
          h("span", { className: "hash" }, "#"),
          room.name,
          room.unread ? h("span", { className: "unread", "data-testid": "unread" }, String(room.unread)) : null,
        ),
        room.custom
          ? h("button", { type: "button", className: "leave", title: `leave ${room.name}`, "aria-label": `leave ${room.name}`,
              "data-testid": "leave-room", onclick: () => leave(room) }, "×")
          : null,
      ),
    ),
  );
}

function renderRoom() {
  const room = rooms.get(current);
  el("room-title").replaceChildren(h("span", { className: "hash" }, "#"), room.name);
  const assistant = room.name === ASSISTANT;
  el("composer").hidden = assistant;
  el("ask-form").hidden = !assistant;
  const list = el("messages");
  list.replaceChildren();
  if (assistant && room.messages.length === 0) {
    list.append(h("li", { className: "empty", "data-testid": "empty" },
      "Ask the assistant something. Its answer streams in word by word: reload the page, or open it in another tab, mid-answer."));
  } else if (room.messages.length === 0) {
    const guest = `guest-${Math.floor(1000 + Math.random() * 9000)}`;
    list.append(h("li", { className: "empty", "data-testid": "empty" },
      `No messages in #${room.name} yet. Say hi, or `,
      h("a", { href: "?" + new URLSearchParams({ user: guest }), target: "_blank" }, `open another window as ${guest}`),
      "."));
  }
  for (const msg of room.messages) appendMessage(msg);
  following = true; // a room just put on screen shows its newest messages
  renderPresence();
}

function appendMessage(msg) {
  const list = el("messages");
  list.querySelector(".empty")?.remove();
  queueScroll();
  msg.node = renderMessage(msg, h("li"));
  list.append(msg.node);
  if (msg.mine) following = true;
}

// queueScroll scrolls the message list to its end in the next frame if it
// was there before this frame's changes.
function queueScroll() {
  if (scrollQueued) return;
  // Once per frame, before its first change: reading the scroll position
  // lays out the whole list (several ms with hundreds of messages), too
  // slow to do per message in a busy room.
  const list = el("messages");
  following = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  scrollQueued = true;
  requestAnimationFrame(() => {
    scrollQueued = false;
    if (following) list.scrollTop = list.scrollHeight;
  });
}

const ANSWER_STATUS = { streaming: "writing…", done: "done", cancelled: "stopped", error: "failed" };

// renderAnswer shows a question and its answer so far; read() appends
// the text that comes to answer.textNode.
function renderAnswer(msg, node) {
  const a = msg.answer;
  node.className = "answer " + msg.status;
  node.dataset.testid = "answer";
  node.dataset.stream = a.id;
  node.dataset.status = msg.status;
  a.textNode = document.createTextNode(msg.text);
  node.replaceChildren(
    h("div", { className: "question" },
      h("span", { className: "avatar", hue: hue(msg.user) }, msg.user.slice(0, 1).toUpperCase()),
      h("div", { className: "body" },
        h("div", { className: "meta" }, h("span", { className: "author" }, msg.user === me ? `${msg.user} (you)` : msg.user), " asked"),
        h("p", { className: "text", "data-testid": "answer-question" }, a.question))),
    h("div", { className: "reply" },
      h("span", { className: "avatar bot" }, "✦"),
      h("div", { className: "body" },
        h("div", { className: "meta" },
          h("span", { className: "author" }, "assistant"),
          h("span", { className: "status", "data-testid": "answer-status", "data-status": msg.status, title: msg.error ?? "" },
            ANSWER_STATUS[msg.status] ?? msg.status),
          msg.status === "streaming"
            ? h("button", { type: "button", className: "stop", "data-testid": "stop-button", onclick: (ev) => { ev.currentTarget.disabled = true; stop(msg); } }, "stop")
            : null),
        h("p", { className: "text", "data-testid": "answer-text" }, a.textNode))),
  );
  return node;
}

function renderMessage(msg, node) {
  if (msg.answer) return renderAnswer(msg, node);
  const time = new Date(msg.ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (msg.notice) {
    node.className = "notice" + (msg.recovery === "gap" ? " gap" : "");
    node.dataset.testid = "notice";
    if (msg.recovery) node.dataset.recovery = msg.recovery; // "recovered" or "gap"
    node.replaceChildren(msg.text, h("time", {}, time));
    return node;
  }
  node.className = "message" + (msg.mine ? " mine" : "") + (msg.status ? " " + msg.status : "");
  node.dataset.testid = "message";
  node.dataset.user = msg.user;
  if (msg.status) node.dataset.status = msg.status;
  node.title = msg.status === "failed" ? `not sent: ${msg.error}` : msg.status === "sending" ? "sending…" : "";
  node.replaceChildren(
    h("span", { className: "avatar", hue: hue(msg.user) }, msg.user.slice(0, 1).toUpperCase()),
    h(
      "div",
      { className: "body" },
      h("div", { className: "meta" },
        h("span", { className: "author" }, msg.mine ? `${msg.user} (you)` : msg.user),
        h("time", {}, time),
        msg.status === "failed" ? h("span", { className: "failed-note" }, "not sent") : null),
      h("p", { className: "text", "data-testid": "message-text" }, msg.text),
    ),
  );
  return node;
}

function renderPresence() {
  const room = rooms.get(current);
  const users = usersOf(room);
  const names = [...users.keys()].sort((a, b) => (a === me ? -1 : b === me ? 1 : a.localeCompare(b)));
  el("online-count").textContent = room.joined ? String(users.size) : "";
  const items = names.map((name) => {
    const conns = users.get(name);
    return h(
      "li",
      { "data-testid": "online-user", "data-user": name },
      h("span", { className: "dot", hue: hue(name) }),
      name === me ? `${name} (you)` : name,
      conns > 1 ? h("span", { className: "conns", title: `${conns} connections` }, `×${conns}`) : null,
    );
  });
  if (room.more > 0) items.push(h("li", { className: "more" }, `and ${room.more} more connections`));
  el("online-list").replaceChildren(...items);
  renderTyping(room);
}

function renderTyping(room) {
  const names = [...new Set(
    [...room.members.values()].filter((m) => m.user !== me && m.state?.typing === room.name).map((m) => m.user || "anonymous"),
  )].sort();
  const line = el("typing");
  line.textContent =
    names.length === 0 ? "" :
    names.length === 1 ? `${names[0]} is typing…` :
    names.length <= 3 ? `${names.slice(0, -1).join(", ")} and ${names.at(-1)} are typing…` :
    `${names.length} people are typing…`;
  line.dataset.users = names.join(" ");
}

// usersOf counts a room's connections per user.
function usersOf(room) {
  const users = new Map();
  for (const m of room.members.values()) {
    const name = m.user || "anonymous";
    users.set(name, (users.get(name) ?? 0) + 1);
  }
  return users;
}

const STATE_LABELS = { connecting: "connecting…", open: "connected", reconnecting: "reconnecting…", closed: "disconnected" };

function showState(state, info) {
  const badge = el("conn-state");
  badge.dataset.state = state;
  badge.textContent = STATE_LABELS[state] ?? state;
  const detail = [info?.code && `close code ${info.code}`, info?.reason, info?.attempt && `attempt ${info.attempt}`]
    .filter(Boolean).join(", ");
  badge.title = detail;
  el("chat").dataset.conn = state; // the lists go grey while they may be stale
  el("message-input").disabled = el("send-button").disabled = state === "closed";
  el("question-input").disabled = el("ask-button").disabled = state === "closed";
}

let errorTimer;
function showError(text) {
  const line = el("error");
  line.textContent = text;
  line.hidden = false;
  clearTimeout(errorTimer);
  errorTimer = setTimeout(() => (line.hidden = true), 6000);
}

function describe(err) {
  return err?.code ? `${err.code}: ${err.message}` : String(err?.message ?? err);
}

function hue(name) {
  let x = 0;
  for (const c of name) x = (x * 31 + c.codePointAt(0)) % 360;
  return x;
}

function wireForms() {
  el("join-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = ev.target.room;
    const name = input.value.trim();
    if (!ID.test(name)) return showError("Room names are 1-128 letters, digits, _ or -.");
    input.value = "";
    show(name);
  });
  const input = el("message-input");
  input.addEventListener("input", typing);
  el("composer").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    send(text);
  });
  el("ask-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const question = ev.target.question.value.trim();
    if (!question) return;
    ev.target.question.value = "";
    ask(question);
  });
}

// ---- start (last: everything above is initialized) -----------------------

el("boot").hidden = true;

if (me && ID.test(me)) {
  start(me);
} else {
  login(me);
}
