// npm run build:test: the client bundle the Node tests import (bundle.mjs).
import { bundleClient } from "./bundle.mjs";

await bundleClient();
