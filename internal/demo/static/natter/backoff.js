// Generated from clients/src/backoff.ts by `npm run build` in clients/. Do not edit.
/**
 * The reconnect policies: how long to wait before the next attempt
 * (backoffDelay, also used for retries on a connection) and which close
 * codes call for a reconnect at all (shouldReconnect).
 */
/**
 * backoffDelay returns the wait before reconnect attempt `attempt` (0 for
 * the first after a drop): "full jitter", a uniformly random delay between 0
 * and min(maxDelayMs, initialDelayMs * factor^attempt), so that clients
 * dropped together by a restarting edge do not come back together.
 */
export function backoffDelay(attempt, options = {}, random = Math.random) {
    const initial = options.initialDelayMs ?? 250;
    const max = options.maxDelayMs ?? 10000;
    const factor = options.factor ?? 2;
    const cap = Math.min(max, initial * factor ** Math.max(0, attempt));
    return Math.floor(random() * cap);
}
/**
 * shouldReconnect tells whether a close code asks for a reconnect:
 * 4000-4099 do, 4100-4199 do not; of the standard codes, normal closure and
 * protocol, data and policy errors (1000, 1002, 1003, 1007, 1008, 1009,
 * 1010) do not, the rest (1001 going away, 1006 abnormal, 1011 ...) do.
 */
export function shouldReconnect(code) {
    if (code >= 4100 && code <= 4199)
        return false;
    return ![1000, 1002, 1003, 1007, 1008, 1009, 1010].includes(code);
}
