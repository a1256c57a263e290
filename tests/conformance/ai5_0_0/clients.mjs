// The real npm client of this folder (ai@5.0.0, the strictest chunk parser), for ../common.
import { createRequire } from "node:module";

import * as ai from "ai";

const require = createRequire(import.meta.url);

export { ai };

export const versions = { ai: require("ai/package.json").version };
