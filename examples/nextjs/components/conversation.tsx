"use client";

import { useChat } from "@ai-sdk/react";
import { DefaultChatTransport, type UIMessage } from "ai";
import { useCallback, useEffect, useState, type FormEvent, type KeyboardEvent } from "react";

/** The service's stored messages carry how each answer ended, beside the UIMessage fields. */
type StoredMessage = UIMessage & { status?: string };

// One transport for the page: POST /api/chat to send, GET /api/chat/{id}/stream to resume
// (the AI SDK's default URLs, served by this app's route handlers).
const transport = new DefaultChatTransport<UIMessage>({ api: "/api/chat" });

function endings(messages: StoredMessage[]): Record<string, string> {
  return Object.fromEntries(messages.map((m) => [m.id, m.status ?? "done"]));
}

function textOf(message: UIMessage, kind: "text" | "reasoning"): string {
  return message.parts
    .map((part) => (part.type === kind ? part.text : ""))
    .join("");
}

/**
 * The conversation of chat `id`: its stored messages, then whatever the service streams.
 *
 * `resume` (the chat exists) makes `useChat` ask for the running answer on mount, so a
 * reload mid-answer, or a second tab, picks the answer up where the service has it.
 */
export function Conversation({
  id,
  initialMessages,
  resume,
  onChanged,
}: {
  id: string;
  initialMessages: StoredMessage[];
  resume: boolean;
  onChanged: () => void;
}) {
  const [input, setInput] = useState("");
  const [ended, setEnded] = useState(() => endings(initialMessages));
  const [stopError, setStopError] = useState<string | null>(null);

  const refreshEndings = useCallback(async () => {
    const response = await fetch(`/api/chats/${encodeURIComponent(id)}`, { cache: "no-store" });
    if (response.ok) {
      const chat = (await response.json()) as { messages: StoredMessage[] };
      setEnded(endings(chat.messages));
    }
  }, [id]);

  const { messages, sendMessage, status, error } = useChat({
    id,
    messages: initialMessages,
    resume,
    transport,
    onFinish: () => {
      onChanged();
      void refreshEndings();
    },
  });
  const busy = status === "submitted" || status === "streaming";

  // The first answer creates the chat: once it streams, the chat list has it.
  useEffect(() => {
    if (status === "streaming") onChanged();
  }, [status, onChanged]);

  function submit(event?: FormEvent) {
    event?.preventDefault();
    const text = input.trim();
    if (!text || busy) return;
    setInput("");
    void sendMessage({ text });
  }

  function onKeyDown(event: KeyboardEvent<HTMLTextAreaElement>) {
    if (event.key === "Enter" && !event.shiftKey) submit(event);
  }

  /** The real stop: the service cancels the answer; every tab reading it sees it end. */
  async function stop() {
    setStopError(null);
    const last = messages.at(-1);
    const body = last?.role === "assistant" ? JSON.stringify({ messageId: last.id }) : undefined;
    const response = await fetch(`/api/chat/${encodeURIComponent(id)}/stop`, {
      method: "POST",
      headers: body ? { "content-type": "application/json" } : undefined,
      body,
    });
    if (!response.ok) setStopError(`stop failed (HTTP ${response.status})`);
  }

  return (
    <>
      <ol id="messages">
        {messages.length === 0 && <li className="notice empty">No messages yet.</li>}
        {messages.map((message) => {
          const reasoning = textOf(message, "reasoning");
          const ending = ended[message.id];
          return (
            <li
              key={message.id}
              className={`message ${message.role}`}
              data-id={message.id}
              data-role={message.role}
              data-ended={ending ?? ""}
            >
              {reasoning && (
                <details className="reasoning">
                  <summary>Reasoning</summary>
                  {reasoning}
                </details>
              )}
              <div className="body">{textOf(message, "text")}</div>
              {ending && ending !== "done" && <span className="badge">{ending}</span>}
            </li>
          );
        })}
      </ol>
      <p id="status" data-state={status}>
        {error ? `Error: ${error.message}` : stopError ?? (busy ? "Answering…" : "")}
      </p>
      <form className="composer" onSubmit={submit}>
        <textarea
          id="input"
          value={input}
          placeholder="Ask something"
          rows={2}
          onChange={(event) => setInput(event.target.value)}
          onKeyDown={onKeyDown}
        />
        {busy ? (
          <button id="stop" type="button" onClick={() => void stop()}>
            Stop
          </button>
        ) : (
          <button id="send" type="submit" disabled={!input.trim()}>
            Send
          </button>
        )}
      </form>
    </>
  );
}
