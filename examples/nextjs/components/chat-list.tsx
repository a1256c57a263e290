import Link from "next/link";

export type ChatSummary = {
  id: string;
  title: string | null;
  activeStreamId: string | null;
  updatedAt: string | null;
};

/** The caller's chats (from the service's `GET /api/chats`), newest first. */
export function ChatList({ chats, current }: { chats: ChatSummary[]; current: string }) {
  return (
    <nav className="sidebar">
      {/* A plain link: "/" picks a new chat id on the server each time. */}
      <a className="new-chat" href="/">
        New chat
      </a>
      <ul id="chats">
        {chats.map((chat) => (
          <li key={chat.id} data-id={chat.id} className={chat.id === current ? "current" : ""}>
            <Link href={`/chat/${encodeURIComponent(chat.id)}`}>
              {chat.title || "Untitled chat"}
              {chat.activeStreamId ? " •" : ""}
            </Link>
          </li>
        ))}
      </ul>
    </nav>
  );
}
