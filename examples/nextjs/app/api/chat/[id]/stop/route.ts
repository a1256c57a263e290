import { forward } from "@/lib/upstream";

export const dynamic = "force-dynamic";
export const runtime = "nodejs";

/** Stop the chat's answer wherever it runs; every tab reading it sees it end. */
export async function POST(
  request: Request,
  { params }: { params: Promise<{ id: string }> },
): Promise<Response> {
  const { id } = await params;
  return forward(request, `/api/chat/${encodeURIComponent(id)}/stop`);
}
