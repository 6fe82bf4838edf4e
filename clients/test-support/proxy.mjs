// A tiny HTTP proxy in front of an edge, for the fallback tests: plain HTTP
// (the event stream and the POSTs) is forwarded, streaming both ways; what
// happens to a WebSocket Upgrade is the test's choice. Lives outside test/
// because node --test runs every .mjs file under a test directory.
import { createServer, request } from "node:http";

/**
 * Starts a proxy to edge (startEdge's result) on a free loopback port.
 * upgrade: "forward" (pass WebSockets through), "refuse" (403), or
 * "stall" (accept the TCP connection and never answer the Upgrade).
 * Returns {url (ws://.../ws like the edge's), counts {upgrades, streams,
 * posts}, failPosts(n, status) (answer the next n POSTs with status
 * without forwarding them), close()}.
 */
export async function startProxy(edge, { upgrade = "refuse" } = {}) {
  const target = new URL(edge.url);
  const counts = { upgrades: 0, streams: 0, posts: 0 };
  const sockets = new Set();
  let failing = { n: 0, status: 404 };
  const server = createServer((req, res) => {
    if (req.method === "POST") counts.posts++;
    else if (req.url.includes("/sse")) counts.streams++;
    if (req.method === "POST" && failing.n > 0) {
      failing.n--;
      req.resume();
      res.writeHead(failing.status, { "Content-Type": "text/plain" }).end("unknown session");
      return;
    }
    const up = request({ host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode, r.headers);
      res.flushHeaders();
      r.pipe(res);
    });
    up.on("error", () => res.destroy());
    // A client that ends its request (the stream's abort) ends the edge's.
    res.on("close", () => up.destroy());
    req.pipe(up);
  });
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  server.on("upgrade", (req, socket, head) => {
    counts.upgrades++;
    sockets.add(socket);
    socket.on("error", () => {});
    if (upgrade === "refuse") {
      socket.end("HTTP/1.1 403 Forbidden\r\nContent-Length: 9\r\nConnection: close\r\n\r\nforbidden");
    } else if (upgrade === "forward") {
      const up = request({ host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers });
      up.on("upgrade", (r, upSocket, upHead) => {
        let head101 = `HTTP/1.1 101 ${r.statusMessage}\r\n`;
        for (let i = 0; i < r.rawHeaders.length; i += 2) head101 += `${r.rawHeaders[i]}: ${r.rawHeaders[i + 1]}\r\n`;
        socket.write(head101 + "\r\n");
        if (upHead.length) socket.write(upHead);
        upSocket.pipe(socket).pipe(upSocket);
        upSocket.on("error", () => socket.destroy());
        socket.on("close", () => upSocket.destroy());
      });
      up.on("response", (r) => {
        socket.end(`HTTP/1.1 ${r.statusCode} ${r.statusMessage}\r\nConnection: close\r\n\r\n`);
      });
      up.on("error", () => socket.destroy());
      if (head.length) up.write(head);
      up.end();
    }
    // "stall": say nothing; the socket stays open until close().
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  return {
    url: `ws://127.0.0.1:${port}${target.pathname}`,
    counts,
    failPosts(n, status = 404) {
      failing = { n, status };
    },
    close() {
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}
