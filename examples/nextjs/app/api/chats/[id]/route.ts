import { forward } from "@/lib/upstream";

export const dynamic = "force-dynamic";
export const runtime = "nodejs";

type Context = { params: Promise<{ id: string }> };

/** One chat with its stored messages (404 when missing or someone else's). */
export async function GET(request: Request, { params }: Context): Promise<Response> {
  const { id } = await params;
  return forward(request, `/api/chats/${encodeURIComponent(id)}`);
}

/** Delete the chat (its running answer is stopped first). */
export async function DELETE(request: Request, { params }: Context): Promise<Response> {
  const { id } = await params;
  return forward(request, `/api/chats/${encodeURIComponent(id)}`);
}
