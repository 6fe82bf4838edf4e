// Compile-time checks of the tracing options against the real
// @opentelemetry/api and SDK (devDependencies): the module, its global
// provider and an SDK provider fit the client's own structural types. The
// client's public types never import the package (test/tracing.test.mjs
// checks dist/*.d.ts), so api.ts, which does not import it either, is what
// an application without it sees.
import * as otel from "@opentelemetry/api";
import { BasicTracerProvider } from "@opentelemetry/sdk-trace-base";
import { connect, type OtelApi, type OtelTracerProvider } from "natter-client";

const api: OtelApi = otel;
const global: OtelTracerProvider = otel.trace.getTracerProvider();
connect("ws://localhost:8080/ws", { otel });
connect("ws://localhost:8080/ws", { otel: api, tracerProvider: new BasicTracerProvider() });
connect("ws://localhost:8080/ws", { tracerProvider: global });
// @ts-expect-error the option takes the API module, not a tracer
connect("ws://localhost:8080/ws", { otel: otel.trace.getTracer("app") });
