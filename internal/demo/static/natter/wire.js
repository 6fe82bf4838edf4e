// Generated from clients/src/wire.ts by `npm run build` in clients/. Do not edit.
/** The JSON text of a frame: `{"type","meta"?,"payload"?}`. */
export function jsonFrame(frame) {
    let s = `{"type":${JSON.stringify(frame.type)}`;
    if (frame.meta !== undefined)
        s += `,"meta":${JSON.stringify(frame.meta)}`;
    if (frame.payload !== undefined)
        s += `,"payload":${frame.payload}`;
    return s + "}";
}
/** The envelope in JSON text; undefined when the text is not one. */
export function parseEnvelope(text) {
    let env;
    try {
        env = JSON.parse(text);
    }
    catch {
        return undefined;
    }
    return isEnvelope(env) ? env : undefined;
}
/** An object with a string type. */
export function isEnvelope(v) {
    return typeof v === "object" && v !== null && !Array.isArray(v) && typeof v.type === "string";
}
/** The "natter" subprotocol: one JSON object per text frame. */
export const jsonCodec = {
    subprotocol: "natter",
    binary: false,
    encode: jsonFrame,
    decode: (data) => (typeof data === "string" ? parseEnvelope(data) : undefined),
};
