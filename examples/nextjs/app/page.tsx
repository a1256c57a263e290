import { redirect } from "next/navigation";

// A new chat id per visit: never prerendered.
export const dynamic = "force-dynamic";

/** `/` starts a new chat: the service creates it on its first message. */
export default function Home() {
  redirect(`/chat/${crypto.randomUUID()}`);
}
