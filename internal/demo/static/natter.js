// Generated from clients/src/natter.ts by `npm run build` in clients/. Do not edit.
export { connect } from "./natter/client.js";
export { NatterError } from "./natter/errors.js";
export { backoffDelay, shouldReconnect } from "./natter/backoff.js";
