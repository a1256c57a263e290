// The real npm clients of this folder, for the shared scripts in ../common (bare imports
// resolve from the importing file, so each version folder re-exports its own packages).
import { createRequire } from "node:module";

import * as aiReact from "@ai-sdk/react";
import * as ai from "ai";
import React from "react";
import TestRenderer from "react-test-renderer";

const require = createRequire(import.meta.url);

export { ai, aiReact, React, TestRenderer };

export const versions = {
  ai: require("ai/package.json").version,
  "@ai-sdk/react": require("@ai-sdk/react/package.json").version,
  // @ai-sdk/react pins its own `ai`; npm nests it when it differs from the top-level one.
  "ai (inside @ai-sdk/react)": createRequire(require.resolve("@ai-sdk/react/package.json"))(
    "ai/package.json",
  ).version,
  react: require("react/package.json").version,
  "react-test-renderer": require("react-test-renderer/package.json").version,
};
