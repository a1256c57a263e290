import { forward } from "@/lib/upstream";

// Every answer is a live stream: never prerender or cache this route, and run it on Node.js,
// where a Response body is written to the socket chunk by chunk.
export const dynamic = "force-dynamic";
export const runtime = "nodejs";

/** Send a message: the service stores it, starts the answer and streams it (SSE). */
export async function POST(request: Request): Promise<Response> {
  return forward(request, "/api/chat");
}
