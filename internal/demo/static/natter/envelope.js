// Generated from clients/src/envelope.ts by `npm run build` in clients/. Do not edit.
/** System types start with "$" or "__" (docs/protocol.md#the-envelope). */
export function isSystemType(type) {
    return type.startsWith("$") || type.startsWith("__");
}
/** JSON of a payload; undefined leaves the key out. */
export function encode(payload) {
    return payload === undefined ? undefined : JSON.stringify(payload);
}
