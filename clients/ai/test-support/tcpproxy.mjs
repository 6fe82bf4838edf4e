// A TCP proxy in front of an edge that can kill every connection through
// it at once (the socket just dies: the client sees 1006, the edge a
// vanished peer) and refuse new ones for a while: a WebSocket dropped
// mid-stream, and a client held away while the producer writes on.
import { createServer, connect } from "node:net";

/**
 * Starts a proxy to edge (startEdge's result). Returns {url (ws://.../ws
 * like the edge's), connections (count accepted), drop() (destroys every
 * open connection), refuse(on) (while on, new connections are destroyed at
 * once), close()}.
 */
export async function startTcpProxy(edge) {
  const target = new URL(edge.url);
  const open = new Set();
  let refusing = false;
  let connections = 0;
  const server = createServer((down) => {
    if (refusing) return void down.destroy();
    connections++;
    const up = connect(Number(target.port), target.hostname);
    const pair = { down, up };
    open.add(pair);
    const end = () => { down.destroy(); up.destroy(); open.delete(pair); };
    down.on("error", end).on("close", end);
    up.on("error", end).on("close", end);
    down.pipe(up).pipe(down);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `ws://127.0.0.1:${server.address().port}${target.pathname}`,
    get connections() { return connections; },
    drop() {
      for (const { down, up } of open) { down.resetAndDestroy(); up.destroy(); }
      open.clear();
    },
    refuse(on) { refusing = on; },
    close() {
      this.drop();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}
