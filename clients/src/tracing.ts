/**
 * Tracing (docs/design/tracing.md): a span per send (`natter.send <type>`,
 * producer) and per request (`natter.rpc <type>`, client), children of the
 * application's active context, whose W3C context the frame carries to the
 * edge in meta.traceparent and meta.tracestate.
 *
 * OpenTelemetry is optional: the client works with the API the application
 * passes (options.otel), or imports @opentelemetry/api itself once per
 * process; where there is none, tracing is off and costs one field check
 * per send. The types below are the few parts of the API the client uses,
 * written out, so that the client's public types never need the package.
 */
import type { Meta } from "./envelope.js";

/** An OpenTelemetry context: opaque to the client. */
export interface OtelContext {
  getValue(key: symbol): unknown;
}

/** The parts of an OpenTelemetry SpanContext the client reads. */
export interface OtelSpanContext {
  traceId: string;
  spanId: string;
  traceFlags: number;
  traceState?: { serialize(): string } | undefined;
}

/** The parts of an OpenTelemetry Span the client uses. */
export interface OtelSpan {
  spanContext(): OtelSpanContext;
  isRecording(): boolean;
  setAttribute(key: string, value: string): unknown;
  setStatus(status: { code: number; message?: string }): unknown;
  end(): void;
}

/** The parts of an OpenTelemetry Tracer the client uses. */
export interface OtelTracer {
  startSpan(name: string, options?: { kind?: number; attributes?: Record<string, string> }, context?: OtelContext): OtelSpan;
}

/** An OpenTelemetry TracerProvider (the SDK's BasicTracerProvider, NodeTracerProvider, WebTracerProvider fit). */
export interface OtelTracerProvider {
  getTracer(name: string, version?: string): OtelTracer;
}

/**
 * The parts of the `@opentelemetry/api` module the client uses: pass the
 * module itself (`import * as otel from "@opentelemetry/api"`).
 */
export interface OtelApi {
  context: { active(): OtelContext };
  trace: {
    getTracer(name: string, version?: string): OtelTracer;
    setSpan(context: OtelContext, span: OtelSpan): OtelContext;
    isSpanContextValid(spanContext: OtelSpanContext): boolean;
  };
  propagation: { inject(context: OtelContext, carrier: Record<string, string>): void };
  SpanKind: { readonly CLIENT: number; readonly PRODUCER: number };
  SpanStatusCode: { readonly ERROR: number };
}

/** The instrumentation scope of the client's spans. */
export const SCOPE = "natter-client";

// @opentelemetry/api as imported by the client: undefined before the
// import settles, null when there is none.
let imported: OtelApi | null | undefined;
let importing: Promise<OtelApi | null> | undefined;

/**
 * Calls fn with @opentelemetry/api, imported once per process: at once
 * when it has been, after the import otherwise, never when it failed.
 */
export function withImportedOtel(fn: (api: OtelApi) => void): void {
  if (imported) return fn(imported);
  if (imported === null) return;
  importing ??= importOtel().then((api) => (imported = api));
  void importing.then((api) => api && fn(api));
}

async function importOtel(): Promise<OtelApi | null> {
  // A literal specifier, awaited inside try: bundlers resolve it when the
  // application has the package and treat it as optional when it has not
  // (webpack and esbuild leave a dynamic import that fails inside a try
  // block to run time); a page without a bundler or import map fails to
  // resolve it, and so does Node where the package is not installed.
  try {
    const api: OtelApi = await import("@opentelemetry/api");
    return api;
  } catch {
    return null;
  }
}

/** Whether v looks like the @opentelemetry/api module. */
export function isOtelApi(v: unknown): v is OtelApi {
  const api = v as Partial<OtelApi> | null;
  return typeof api === "object" && api !== null && typeof api.trace?.getTracer === "function" &&
    typeof api.context?.active === "function" && typeof api.propagation?.inject === "function";
}

/** The spans of one client. */
export class Tracing {
  readonly #api: OtelApi;
  readonly #tracer: OtelTracer;

  constructor(api: OtelApi, provider?: OtelTracerProvider) {
    this.#api = api;
    this.#tracer = (provider ?? api.trace).getTracer(SCOPE);
  }

  /** Starts the producer span of a send of type; meta is the application's. */
  send(type: string, meta: Meta | undefined): TraceSpan {
    return this.#start("natter.send", type, this.#api.SpanKind.PRODUCER, meta);
  }

  /** Starts the client span of a request of type. */
  rpc(type: string): TraceSpan {
    return this.#start("natter.rpc", type, this.#api.SpanKind.CLIENT, undefined);
  }

  #start(name: string, type: string, kind: number, meta: Meta | undefined): TraceSpan {
    const api = this.#api;
    const parent = api.context.active();
    const span = this.#tracer.startSpan(`${name} ${type}`, { kind, attributes: { "messaging.system": "natter", "natter.type": type } }, parent);
    // The application's own traceparent wins, tracestate and all.
    if (meta?.traceparent !== undefined) return new TraceSpan(api, span, meta);
    const sc = span.spanContext();
    if (!api.trace.isSpanContextValid(sc)) return new TraceSpan(api, span, meta);
    // The application's propagator, when it has registered one that
    // writes traceparent; else the W3C format, as the contract needs.
    const carrier: Record<string, string> = {};
    try {
      api.propagation.inject(api.trace.setSpan(parent, span), carrier);
    } catch {
      // A faulty propagator never fails a send.
    }
    let tp: string | undefined = carrier["traceparent"];
    let ts: string | undefined = carrier["tracestate"];
    if (typeof tp !== "string") {
      tp = traceparent(sc);
      ts = sc.traceState?.serialize();
    }
    const out: Meta = { ...meta, traceparent: tp };
    if (typeof ts === "string" && ts !== "") out["tracestate"] = ts;
    return new TraceSpan(api, span, out);
  }
}

/** The W3C traceparent (version 00) of a span context. */
export function traceparent(sc: OtelSpanContext): string {
  return `00-${sc.traceId}-${sc.spanId}-${(sc.traceFlags & 0xff).toString(16).padStart(2, "0")}`;
}

/** The span of one send or request, and the meta its frame carries. */
export class TraceSpan {
  /** The frame's meta: the application's (for a send) with the span's traceparent and tracestate. */
  readonly meta: Meta | undefined;
  readonly #api: OtelApi;
  readonly #span: OtelSpan;

  constructor(api: OtelApi, span: OtelSpan, meta: Meta | undefined) {
    this.#api = api;
    this.#span = span;
    this.meta = meta;
  }

  /** Records the request's correlation id. */
  correlate(cid: string): void {
    if (this.#span.isRecording()) this.#span.setAttribute("natter.correlation_id", cid);
  }

  /** Ends the span; failed (status ERROR, natter.error.code) when err is given. */
  end(err?: unknown): void {
    if (err !== undefined && this.#span.isRecording()) {
      const code = (err as { code?: unknown } | null)?.code;
      if (typeof code === "string") this.#span.setAttribute("natter.error.code", code);
      this.#span.setStatus({ code: this.#api.SpanStatusCode.ERROR, message: err instanceof Error ? err.message : String(err) });
    }
    this.#span.end();
  }

  /** Ends the span when p settles; returns p's outcome. */
  settle<T>(p: Promise<T>): Promise<T> {
    return p.then(
      (v) => {
        this.end();
        return v;
      },
      (err: unknown) => {
        this.end(err);
        throw err;
      },
    );
  }
}
