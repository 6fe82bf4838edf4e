/**
 * The WebSocket transport: the subprotocol of the wire's codec ("natter"
 * or "natter.protobuf") plus `bearer.<token>`, one envelope per message.
 */
import type { Transport, TransportEvents } from "./transport.js";
import type { Codec, Frame } from "./wire.js";

/** What the client needs of a WebSocket; the browser's, Node's and the `ws` package's fit. */
export interface WebSocketLike {
  readonly readyState: number;
  /** Set to "arraybuffer" for the binary wire. */
  binaryType?: string;
  send(data: string | Uint8Array<ArrayBuffer>): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: string, listener: (event: unknown) => void): void;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

const OPEN = 1; // WebSocket.OPEN

/** Opens a WebSocket to url (ws: or wss:); throws what the constructor throws. */
export function dialWebSocket(WS: WebSocketConstructor, url: string, token: string | undefined, codec: Codec, events: TransportEvents): Transport {
  const ws = new WS(url, token ? [codec.subprotocol, `bearer.${token}`] : [codec.subprotocol]);
  if (codec.binary) ws.binaryType = "arraybuffer";
  // Once: the socket's close, or an error (Node 20's WebSocket may fire
  // "error" without "close" when a handshake fails).
  let done = false;
  const end = (code: number, reason: string) => {
    if (done) return;
    done = true;
    events.close(code, reason);
  };
  ws.addEventListener("open", () => {
    if (!done) events.open();
  });
  ws.addEventListener("message", (ev) => {
    if (done) return;
    let env;
    try {
      env = codec.decode((ev as { data: unknown }).data);
    } catch (err) {
      events.error(err instanceof Error ? err : new Error(String(err)));
      return;
    }
    if (env) events.frame(env);
  });
  ws.addEventListener("error", () => end(1006, "connection error"));
  ws.addEventListener("close", (ev) => {
    const { code, reason } = ev as { code: number; reason: string };
    end(code, reason);
  });
  return {
    name: "websocket",
    get writable() {
      return !done && ws.readyState === OPEN;
    },
    send(frame: Frame) {
      ws.send(codec.encode(frame));
    },
    close(code?: number, reason?: string) {
      done = true;
      try {
        ws.close(code, reason);
      } catch {
        // Already closing.
      }
    },
  };
}
