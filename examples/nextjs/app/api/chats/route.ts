import { forward } from "@/lib/upstream";

export const dynamic = "force-dynamic";
export const runtime = "nodejs";

/** The caller's chats, most recent first. */
export async function GET(request: Request): Promise<Response> {
  return forward(request, "/api/chats");
}
