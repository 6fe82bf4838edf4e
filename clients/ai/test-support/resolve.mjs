// A module resolve hook (node --import ./test-support/resolve.mjs): bare
// imports of the client's test helpers (../test-support/*.mjs, which import
// @nats-io/transport-node) resolve from this package's node_modules, not
// clients/node_modules, which this package neither installs nor may rely
// on: clients' own test may be running `npm ci` there at the same time.
import { register } from "node:module";

register("./resolve-hook.mjs", import.meta.url);
