// Generated from clients/src/websocket.ts by `npm run build` in clients/. Do not edit.
const OPEN = 1; // WebSocket.OPEN
/** Opens a WebSocket to url (ws: or wss:); throws what the constructor throws. */
export function dialWebSocket(WS, url, token, codec, events) {
    const ws = new WS(url, token ? [codec.subprotocol, `bearer.${token}`] : [codec.subprotocol]);
    if (codec.binary)
        ws.binaryType = "arraybuffer";
    // Once: the socket's close, or an error (Node 20's WebSocket may fire
    // "error" without "close" when a handshake fails).
    let done = false;
    const end = (code, reason) => {
        if (done)
            return;
        done = true;
        events.close(code, reason);
    };
    ws.addEventListener("open", () => {
        if (!done)
            events.open();
    });
    ws.addEventListener("message", (ev) => {
        if (done)
            return;
        let env;
        try {
            env = codec.decode(ev.data);
        }
        catch (err) {
            events.error(err instanceof Error ? err : new Error(String(err)));
            return;
        }
        if (env)
            events.frame(env);
    });
    ws.addEventListener("error", () => end(1006, "connection error"));
    ws.addEventListener("close", (ev) => {
        const { code, reason } = ev;
        end(code, reason);
    });
    return {
        name: "websocket",
        get writable() {
            return !done && ws.readyState === OPEN;
        },
        send(frame) {
            ws.send(codec.encode(frame));
        },
        close(code, reason) {
            done = true;
            try {
                ws.close(code, reason);
            }
            catch {
                // Already closing.
            }
        },
    };
}
