// The real AI SDK 4 clients of this folder, for the shared scripts in ../common.
import { createRequire } from "node:module";

import * as aiReact from "@ai-sdk/react";
import * as uiUtils from "@ai-sdk/ui-utils";
import React from "react";
import TestRenderer from "react-test-renderer";
import * as swr from "swr";

const require = createRequire(import.meta.url);

export { aiReact, React, swr, TestRenderer, uiUtils };

export const versions = {
  ai: require("ai/package.json").version,
  "@ai-sdk/react": require("@ai-sdk/react/package.json").version,
  "@ai-sdk/ui-utils": require("@ai-sdk/ui-utils/package.json").version,
  react: require("react/package.json").version,
  "react-test-renderer": require("react-test-renderer/package.json").version,
};
