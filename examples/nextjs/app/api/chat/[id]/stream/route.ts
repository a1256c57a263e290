import { forward } from "@/lib/upstream";

export const dynamic = "force-dynamic";
export const runtime = "nodejs";

/**
 * Resume the chat's answer (`useChat({ resume: true })` calls this on mount): the running or
 * just-finished answer replayed from its first chunk, then live; 204 when there is nothing
 * to resume. `?after=` and `Last-Event-ID` pass through for clients that resume mid-way.
 */
export async function GET(
  request: Request,
  { params }: { params: Promise<{ id: string }> },
): Promise<Response> {
  const { id } = await params;
  const { search } = new URL(request.url);
  return forward(request, `/api/chat/${encodeURIComponent(id)}/stream${search}`);
}
