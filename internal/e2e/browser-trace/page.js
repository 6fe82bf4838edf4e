// The page's code, bundled by trace.mjs with esbuild: a browser
// application that traces with the OpenTelemetry web SDK, exports to an
// OTLP/HTTP receiver, and makes one Natter RPC inside a span of its own.
//
// "natter-client" is the client's TypeScript source (clients/src), and
// every package it imports resolves from this directory's node_modules, as
// in an application that installed natter-client: one copy of
// @opentelemetry/api in the page.
import * as otel from "@opentelemetry/api";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { BatchSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { WebTracerProvider } from "@opentelemetry/sdk-trace-web";
import { connect } from "natter-client";

/**
 * runTrace connects to the edge at edge as user, and in an application span
 * "browser.click" calls rpc(type); it ends the span, flushes the exporter
 * and answers {traceId, spanId, reply, exports}: exports are the results of
 * the exporter's calls ({code, error}), so that a receiver that refused the
 * spans is named rather than waited for.
 */
globalThis.runTrace = async ({ edge, otlp, user, type, timeoutMs }) => {
  const exports = [];
  const exporter = new OTLPTraceExporter({ url: `${otlp}/v1/traces` });
  const recording = {
    export(spans, done) {
      exporter.export(spans, (result) => {
        exports.push({ spans: spans.length, code: result.code, error: result.error ? String(result.error) : undefined });
        done(result);
      });
    },
    shutdown: () => exporter.shutdown(),
    forceFlush: () => exporter.forceFlush(),
  };
  const provider = new WebTracerProvider({
    resource: resourceFromAttributes({ "service.name": "natter-browser" }),
    spanProcessors: [new BatchSpanProcessor(recording)],
  });
  // The global tracer provider, the web SDK's context manager and the W3C
  // propagator: what the client finds through the API module.
  provider.register();

  const client = connect(edge, { user, otel, transports: ["websocket"], connectTimeoutMs: timeoutMs });
  try {
    await new Promise((resolve, reject) => {
      if (client.state === "open") return resolve();
      const timer = setTimeout(() => reject(new Error(`no open connection to ${edge} within ${timeoutMs} ms`)), timeoutMs);
      client.onState((state, info) => {
        if (state === "open") {
          clearTimeout(timer);
          resolve();
        } else if (state === "closed") {
          clearTimeout(timer);
          reject(new Error(`connection closed: ${JSON.stringify(info)}`));
        }
      });
    });
    const tracer = otel.trace.getTracer("natter-e2e-browser-trace");
    const span = tracer.startSpan("browser.click");
    let reply;
    try {
      // The client starts its span synchronously in rpc(), under the
      // active context: the click's span.
      reply = await otel.context.with(otel.trace.setSpan(otel.context.active(), span), () =>
        client.rpc(type, undefined, { timeoutMs }));
    } finally {
      span.end();
    }
    await provider.forceFlush();
    const { traceId, spanId } = span.spanContext();
    return { traceId, spanId, reply, exports };
  } finally {
    client.close();
    await provider.shutdown();
  }
};
