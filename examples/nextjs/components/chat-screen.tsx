"use client";

import { useCallback, useEffect, useState } from "react";
import type { UIMessage } from "ai";
import { ChatList, type ChatSummary } from "./chat-list";
import { Conversation } from "./conversation";

type Loaded =
  | { state: "loading" }
  | { state: "failed"; message: string }
  | { state: "ready"; messages: UIMessage[]; exists: boolean };

async function errorText(response: Response): Promise<string> {
  try {
    const body = (await response.json()) as { error?: { message?: string } };
    return body.error?.message ?? `HTTP ${response.status}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}

/**
 * One chat page: the chat list beside the conversation.
 *
 * The list is fetched first and the chat after it: on a first visit the list's response
 * carries the service's new guest cookie, and the chat request then goes as that guest
 * (two requests at once would each create a guest).
 */
export function ChatScreen({ id }: { id: string }) {
  const [chats, setChats] = useState<ChatSummary[]>([]);
  const [loaded, setLoaded] = useState<Loaded>({ state: "loading" });

  const refreshChats = useCallback(async () => {
    const response = await fetch("/api/chats", { cache: "no-store" });
    if (!response.ok) throw new Error(await errorText(response));
    const body = (await response.json()) as { chats: ChatSummary[] };
    setChats(body.chats);
  }, []);

  const chatsChanged = useCallback(() => {
    refreshChats().catch(() => undefined); // the list is a convenience: it may lag
  }, [refreshChats]);

  useEffect(() => {
    let cancelled = false;
    (async () => {
      try {
        await refreshChats();
        const response = await fetch(`/api/chats/${encodeURIComponent(id)}`, {
          cache: "no-store",
        });
        if (cancelled) return;
        if (response.status === 404) {
          // A new chat, or someone else's: both look the same, and both start empty.
          setLoaded({ state: "ready", messages: [], exists: false });
          return;
        }
        if (!response.ok) {
          setLoaded({ state: "failed", message: await errorText(response) });
          return;
        }
        const chat = (await response.json()) as { messages: UIMessage[] };
        setLoaded({ state: "ready", messages: chat.messages, exists: true });
      } catch (error) {
        if (!cancelled) setLoaded({ state: "failed", message: String(error) });
      }
    })();
    return () => {
      cancelled = true;
    };
  }, [id, refreshChats]);

  return (
    <div className="layout">
      <ChatList chats={chats} current={id} />
      <main className="chat">
        {loaded.state === "loading" && <p className="notice">Loading…</p>}
        {loaded.state === "failed" && (
          <p className="notice error" id="load-error">
            Could not load this chat: {loaded.message}
          </p>
        )}
        {loaded.state === "ready" && (
          <Conversation
            id={id}
            initialMessages={loaded.messages}
            resume={loaded.exists}
            onChanged={chatsChanged}
          />
        )}
      </main>
    </div>
  );
}
