// Generated from clients/src/tracing.ts by `npm run build` in clients/. Do not edit.
/** The instrumentation scope of the client's spans. */
export const SCOPE = "natter-client";
// @opentelemetry/api as imported by the client: undefined before the
// import settles, null when there is none.
let imported;
let importing;
/**
 * Calls fn with @opentelemetry/api, imported once per process: at once
 * when it has been, after the import otherwise, never when it failed.
 */
export function withImportedOtel(fn) {
    if (imported)
        return fn(imported);
    if (imported === null)
        return;
    importing ??= importOtel().then((api) => (imported = api));
    void importing.then((api) => api && fn(api));
}
async function importOtel() {
    // A literal specifier, awaited inside try: bundlers resolve it when the
    // application has the package and treat it as optional when it has not
    // (webpack and esbuild leave a dynamic import that fails inside a try
    // block to run time); a page without a bundler or import map fails to
    // resolve it, and so does Node where the package is not installed.
    try {
        const api = await import("@opentelemetry/api");
        return api;
    }
    catch {
        return null;
    }
}
/** Whether v looks like the @opentelemetry/api module. */
export function isOtelApi(v) {
    const api = v;
    return typeof api === "object" && api !== null && typeof api.trace?.getTracer === "function" &&
        typeof api.context?.active === "function" && typeof api.propagation?.inject === "function";
}
/** The spans of one client. */
export class Tracing {
    #api;
    #tracer;
    constructor(api, provider) {
        this.#api = api;
        this.#tracer = (provider ?? api.trace).getTracer(SCOPE);
    }
    /** Starts the producer span of a send of type; meta is the application's. */
    send(type, meta) {
        return this.#start("natter.send", type, this.#api.SpanKind.PRODUCER, meta);
    }
    /** Starts the client span of a request of type. */
    rpc(type) {
        return this.#start("natter.rpc", type, this.#api.SpanKind.CLIENT, undefined);
    }
    #start(name, type, kind, meta) {
        const api = this.#api;
        const parent = api.context.active();
        const span = this.#tracer.startSpan(`${name} ${type}`, { kind, attributes: { "messaging.system": "natter", "natter.type": type } }, parent);
        // The application's own traceparent wins, tracestate and all.
        if (meta?.traceparent !== undefined)
            return new TraceSpan(api, span, meta);
        const sc = span.spanContext();
        if (!api.trace.isSpanContextValid(sc))
            return new TraceSpan(api, span, meta);
        // The application's propagator, when it has registered one that
        // writes traceparent; else the W3C format, as the contract needs.
        const carrier = {};
        try {
            api.propagation.inject(api.trace.setSpan(parent, span), carrier);
        }
        catch {
            // A faulty propagator never fails a send.
        }
        let tp = carrier["traceparent"];
        let ts = carrier["tracestate"];
        if (typeof tp !== "string") {
            tp = traceparent(sc);
            ts = sc.traceState?.serialize();
        }
        const out = { ...meta, traceparent: tp };
        if (typeof ts === "string" && ts !== "")
            out["tracestate"] = ts;
        return new TraceSpan(api, span, out);
    }
}
/** The W3C traceparent (version 00) of a span context. */
export function traceparent(sc) {
    return `00-${sc.traceId}-${sc.spanId}-${(sc.traceFlags & 0xff).toString(16).padStart(2, "0")}`;
}
/** The span of one send or request, and the meta its frame carries. */
export class TraceSpan {
    /** The frame's meta: the application's (for a send) with the span's traceparent and tracestate. */
    meta;
    #api;
    #span;
    constructor(api, span, meta) {
        this.#api = api;
        this.#span = span;
        this.meta = meta;
    }
    /** Records the request's correlation id. */
    correlate(cid) {
        if (this.#span.isRecording())
            this.#span.setAttribute("natter.correlation_id", cid);
    }
    /** Ends the span; failed (status ERROR, natter.error.code) when err is given. */
    end(err) {
        if (err !== undefined && this.#span.isRecording()) {
            const code = err?.code;
            if (typeof code === "string")
                this.#span.setAttribute("natter.error.code", code);
            this.#span.setStatus({ code: this.#api.SpanStatusCode.ERROR, message: err instanceof Error ? err.message : String(err) });
        }
        this.#span.end();
    }
    /** Ends the span when p settles; returns p's outcome. */
    settle(p) {
        return p.then((v) => {
            this.end();
            return v;
        }, (err) => {
            this.end(err);
            throw err;
        });
    }
}
