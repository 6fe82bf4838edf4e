// The hook of resolve.mjs, run on Node's loader thread.
import { fileURLToPath, pathToFileURL } from "node:url";
import { dirname, join, sep } from "node:path";

const here = dirname(fileURLToPath(import.meta.url)); // clients/ai/test-support
const pkg = dirname(here); // clients/ai
const clients = dirname(pkg); // clients
const fromHere = pathToFileURL(join(here, "resolve.mjs")).href;

export async function resolve(specifier, context, next) {
  const bare = !/^(\.|\/|[a-z]+:)/.test(specifier);
  const parent = context.parentURL?.startsWith("file:") ? fileURLToPath(context.parentURL) : "";
  if (bare && parent.startsWith(clients + sep) && !parent.startsWith(pkg + sep)) {
    return next(specifier, { ...context, parentURL: fromHere });
  }
  return next(specifier, context);
}
