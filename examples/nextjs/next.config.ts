import type { NextConfig } from "next";

// `compress` stays on (pages and assets are gzipped). The token streams are not: the route
// handlers mark them `Cache-Control: no-transform`, which the compression step honours
// (see lib/upstream.ts and docs/nextjs.md in the repository).
const config: NextConfig = {
  reactStrictMode: true,
};

export default config;
