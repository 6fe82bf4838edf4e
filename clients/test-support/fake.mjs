// A scripted WebSocket for unit tests of the client's own logic (buffer,
// backoff, tokens), injected through options.WebSocket.

/** Returns a WebSocket constructor whose instances are listed in .sockets. */
export function fakeWebSocket() {
  class FakeWebSocket {
    static sockets = [];
    readyState = 0;
    sent = [];
    #listeners = {};

    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      FakeWebSocket.sockets.push(this);
    }
    addEventListener(type, fn) {
      (this.#listeners[type] ??= []).push(fn);
    }
    send(data) {
      if (this.readyState !== 1) throw new Error("not open");
      this.sent.push(JSON.parse(data));
    }
    close(code = 1000, reason = "") {
      this.serverClose(code, reason);
    }

    // Test controls.
    /**
     * Completes the handshake and, as an edge does, sends $connected with
     * the id "fake-<n>" (n counts sockets from 1); welcome false leaves it
     * to the test.
     */
    open({ welcome = true } = {}) {
      this.readyState = 1;
      this.#fire("open", {});
      if (welcome) this.serverSend({ type: "$connected", payload: { connectionId: `fake-${FakeWebSocket.sockets.indexOf(this) + 1}` } });
    }
    serverSend(env) {
      this.#fire("message", { data: JSON.stringify(env) });
    }
    /** An error event alone, as Node 20's WebSocket sends for a failed handshake. */
    fail() {
      this.#fire("error", {});
    }
    serverClose(code, reason = "") {
      if (this.readyState === 3) return;
      this.readyState = 3;
      this.#fire("close", { code, reason });
    }
    #fire(type, ev) {
      for (const fn of this.#listeners[type] ?? []) fn(ev);
    }
  }
  return FakeWebSocket;
}

/** Socket number count, once it exists (an error after 2 s, rather than a hang). */
export async function lastSocket(WS, count = 1) {
  const until = Date.now() + 2000;
  while (WS.sockets.length < count) {
    if (Date.now() > until) throw new Error(`no socket #${count} (${WS.sockets.length} made)`);
    await new Promise((r) => setTimeout(r, 1));
  }
  return WS.sockets[count - 1];
}
