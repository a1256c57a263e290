/**
 * Forwarding a browser's request to the unbroken chat service and its answer back.
 *
 * The service owns identity (its signed guest cookie or an API key), the chats and the
 * streams; this app only passes requests through. Answers are Server-Sent Events that must
 * reach the browser chunk by chunk, so the upstream body is handed to the browser as the
 * same stream: nothing here reads, buffers, re-chunks or compresses it.
 */

/** Request headers the service needs from the browser; everything else stays here. */
const REQUEST_HEADERS = [
  "accept",
  "authorization",
  "content-type",
  "cookie",
  "last-event-id",
  "user-agent",
] as const;

/**
 * Response headers passed back to the browser. Hop-by-hop headers and the body's framing
 * (`content-length`, `transfer-encoding`, `content-encoding`) are left out on purpose:
 * Node's fetch already decoded the body, and the browser's connection has its own framing.
 */
const RESPONSE_HEADERS = [
  "cache-control",
  "content-type",
  "retry-after",
  "www-authenticate",
  "x-accel-buffering",
  "x-vercel-ai-data-stream",
  "x-vercel-ai-ui-message-stream",
] as const;

const UNSAFE_METHODS = new Set(["POST", "PUT", "PATCH", "DELETE"]);

/** The service's base URL, from `UNBROKEN_URL` (read per request, so tests can set it late). */
export function serviceUrl(): string {
  const url = process.env.UNBROKEN_URL ?? "http://127.0.0.1:8000";
  return url.replace(/\/+$/, "");
}

/** A JSON error in the service's shape: `{"error": {"code", "message"}}`. */
export function errorResponse(status: number, code: string, message: string): Response {
  return Response.json({ error: { code, message } }, { status });
}

/**
 * Whether a state-changing request comes from this app's own pages.
 *
 * The service refuses a cookie-authenticated POST whose `Origin` differs from its `Host`
 * (cross-site request forgery). Behind this app the browser's origin is this app's, never
 * the service's, so the check is made here, against the host the browser addressed, and the
 * `Origin` header is not forwarded.
 */
function fromOwnOrigin(request: Request): boolean {
  if (!UNSAFE_METHODS.has(request.method)) return true;
  const origin = request.headers.get("origin");
  if (origin === null) return true; // not a browser's cross-site request
  const host = request.headers.get("x-forwarded-host") ?? request.headers.get("host");
  try {
    return host !== null && new URL(origin).host.toLowerCase() === host.toLowerCase();
  } catch {
    return false; // "null" and other opaque origins
  }
}

function upstreamHeaders(request: Request): Headers {
  const headers = new Headers();
  for (const name of REQUEST_HEADERS) {
    const value = request.headers.get(name);
    if (value !== null) headers.set(name, value);
  }
  // The service sends no compressed bodies today; asking for none keeps it that way,
  // whatever sits in between, so every chunk can be passed on the moment it arrives.
  headers.set("accept-encoding", "identity");
  return headers;
}

function browserHeaders(upstream: Response): Headers {
  const headers = new Headers();
  for (const name of RESPONSE_HEADERS) {
    const value = upstream.headers.get(name);
    if (value !== null) headers.set(name, value);
  }
  // A first visit gets the service's guest cookie: it must reach the browser, every value.
  for (const cookie of upstream.headers.getSetCookie()) headers.append("set-cookie", cookie);
  if (headers.get("content-type")?.startsWith("text/event-stream")) {
    // `no-transform` keeps Next.js's compression (and any proxy honouring it) off this
    // body: gzip holds small events back until it has a block worth compressing.
    headers.set("cache-control", "no-cache, no-transform");
    headers.set("x-accel-buffering", "no");
  }
  return headers;
}

/**
 * Send `request` to `path` on the service and return the service's answer: its status, the
 * headers that matter, and its body as the same stream (a 204 stays bodiless).
 *
 * The browser's abort signal goes along, so a closed tab closes the upstream connection
 * too; the answer goes on being generated in the service, which is the point.
 */
export async function forward(request: Request, path: string): Promise<Response> {
  if (!fromOwnOrigin(request)) {
    return errorResponse(403, "forbidden", "cross-origin requests are not allowed");
  }
  const hasBody = request.method !== "GET";
  let upstream: Response;
  try {
    upstream = await fetch(`${serviceUrl()}${path}`, {
      method: request.method,
      headers: upstreamHeaders(request),
      // Request bodies are small JSON documents; reading them whole is simpler than a
      // streamed upload (which Node's fetch only takes with `duplex: "half"`).
      body: hasBody ? await request.arrayBuffer() : undefined,
      signal: request.signal,
      cache: "no-store",
      redirect: "manual",
    });
  } catch (error) {
    if (request.signal.aborted) return new Response(null, { status: 499 });
    console.error(`unbroken service unreachable at ${serviceUrl()}:`, error);
    return errorResponse(502, "bad_gateway", "the chat service is unreachable; try again shortly");
  }
  const headers = browserHeaders(upstream);
  const bodiless = upstream.status === 204 || upstream.status === 304;
  return new Response(bodiless ? null : upstream.body, { status: upstream.status, headers });
}
