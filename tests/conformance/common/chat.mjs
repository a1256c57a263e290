// AI SDK 5/6/7: the headless `Chat` class from `@ai-sdk/react` (what `useChat` wraps).
//
// cut*: `sendMessage` (POST) is cut mid-stream, then `resumeStream()` (GET .../stream) must
//       end with ONE complete assistant message, not a duplicate next to the partial one,
//       nor duplicated parts inside it. cutAbort: the fetch is aborted; cutNetwork: the
//       connection is terminated (Node's `TypeError: terminated`); cutBrowser: Chrome's
//       `TypeError: network error`, which ai >= 5.0.268 treats as a resumable disconnect and
//       continues its own state; cutInToolInput: aborted while a tool call's input streams
//       (ai >= 5.0.270 then continues the partial message).
// stop: `stop()` on the client mid-stream is only a disconnect: a reconnect right after it
//       replays the whole answer, which the server kept generating, up to its `finish`.
// serverStop: the real cancellation, `POST /api/chat/{id}/stop`, ends the live answer with
//       `abort`: the client keeps the partial message, without an error; nothing to resume.
//
// config: { clientsDir, api, chats: { <scenario>: <chat id>, ... }, userText, timeoutMs? }

import { cuttableFetch, main, plain, recorder, storedChat, textOf, waitFor } from "./util.mjs";

const hasText = (chat) => {
  const last = chat.messages.at(-1);
  return last?.role === "assistant" && textOf(last).length > 0;
};

const inToolInput = (chat) => {
  const last = chat.messages.at(-1);
  return (
    last?.role === "assistant" &&
    last.parts.some((part) => part.type.startsWith("tool-") && part.state === "input-streaming")
  );
};

/** Resolve once `predicate(chat)` holds, checked on every message update (exact moment). */
function whenMessages(chat, predicate, what) {
  return new Promise((resolve, reject) => {
    const check = () => {
      if (predicate(chat)) {
        unsubscribe();
        resolve();
      }
    };
    const unsubscribe = chat["~registerMessagesCallback"](check);
    check();
    waitFor(() => predicate(chat), { what }).catch(reject);
  });
}

async function cutThenResume({ ai, aiReact }, config, chatId, { mode, when = hasText }) {
  const fetch = cuttableFetch({ mode });
  const errors = [];
  const statuses = [];
  const chat = new aiReact.Chat({
    id: chatId,
    transport: new ai.DefaultChatTransport({ api: config.api, fetch }),
    onError: (error) => errors.push(String(error)),
  });
  let partial;
  let cutCount = 0;
  const cut = whenMessages(chat, when, "the moment to cut").then(() => {
    // Cut synchronously on the update that made `when` true, before the next chunk lands.
    partial = plain(chat.messages.at(-1));
    cutCount = fetch.cutAll();
  });
  const sending = chat.sendMessage({ text: config.userText });
  await cut;
  await sending;
  statuses.push(chat.status);
  const messagesAfterCut = plain(chat.messages);

  await chat.resumeStream();
  statuses.push(chat.status);
  return {
    cutCount,
    partial,
    messagesAfterCut,
    statuses,
    errors,
    error: chat.error ? String(chat.error) : null,
    messages: plain(chat.messages),
    requests: fetch.requests,
  };
}

async function stopThenReconnect({ ai, aiReact }, config, chatId) {
  const finishes = [];
  const fetch = cuttableFetch();
  const chat = new aiReact.Chat({
    id: chatId,
    transport: new ai.DefaultChatTransport({ api: config.api, fetch }),
    onFinish: (event) => finishes.push({ isAbort: event.isAbort ?? null, isError: event.isError ?? null }),
  });
  const sending = chat.sendMessage({ text: config.userText });
  await waitFor(() => hasText(chat), { what: "the first text of the answer" });
  await chat.stop();
  await sending;
  const statusAfterStop = chat.status;
  const messagesAfterStop = plain(chat.messages);

  // An independent reader (another tab, or this page after a reload) sees the generation go
  // on to the end: a full replay from the first chunk that ends with `finish`. The stopped
  // Chat itself resumes at the same time and must end with one complete message.
  const transport = new ai.DefaultChatTransport({ api: config.api });
  const chunks = [];
  const readReplay = async () => {
    const stream = await transport.reconnectToStream({ chatId });
    if (stream == null) return null;
    const reader = stream.pipeThrough(recorder(chunks)).getReader();
    while (!(await reader.read()).done) {
      // drain
    }
    return chunks.map((chunk) => chunk.type);
  };
  const [replayed] = await Promise.all([readReplay(), chat.resumeStream()]);
  // Later, the server has stored the complete answer.
  const stored = await storedChat(config.api, chatId, { settled: true });
  return {
    statusAfterStop,
    messagesAfterStop,
    finishes,
    replayedChunkTypes: replayed,
    storedMessages: stored.messages,
    replayChunks: chunks,
    status: chat.status,
    error: chat.error ? String(chat.error) : null,
    messages: plain(chat.messages),
  };
}

async function serverStop({ ai, aiReact }, config, chatId) {
  const errors = [];
  const chunks = [];
  const transport = new ai.DefaultChatTransport({ api: config.api });
  // Record the chunks the Chat receives on its POST.
  const sendMessages = transport.sendMessages.bind(transport);
  transport.sendMessages = async (options) => (await sendMessages(options)).pipeThrough(recorder(chunks));
  const chat = new aiReact.Chat({ id: chatId, transport, onError: (error) => errors.push(String(error)) });
  const sending = chat.sendMessage({ text: config.userText });
  await waitFor(() => hasText(chat), { what: "the first text of the answer" });
  const stop = await fetch(`${config.api}/${encodeURIComponent(chatId)}/stop`, { method: "POST" });
  await sending;
  const afterStop = await new ai.DefaultChatTransport({ api: config.api }).reconnectToStream({ chatId });
  const stored = await storedChat(config.api, chatId, { settled: true });
  return {
    stopStatus: stop.status,
    stopBody: await stop.json(),
    storedMessages: stored.messages,
    status: chat.status,
    error: chat.error ? String(chat.error) : null,
    errors,
    chunkTypes: chunks.map((chunk) => chunk.type),
    messages: plain(chat.messages),
    reconnectAfterStop: afterStop == null ? "null" : "stream",
  };
}

const SCENARIOS = {
  cutAbort: (clients, config, chatId) => cutThenResume(clients, config, chatId, { mode: "abort" }),
  cutNetwork: (clients, config, chatId) => cutThenResume(clients, config, chatId, { mode: "network" }),
  cutBrowser: (clients, config, chatId) => cutThenResume(clients, config, chatId, { mode: "browser" }),
  cutInToolInput: (clients, config, chatId) =>
    cutThenResume(clients, config, chatId, { mode: "abort", when: inToolInput }),
  stop: stopThenReconnect,
  serverStop,
};

main(async (config, clients) => {
  const results = {};
  for (const [scenario, chatId] of Object.entries(config.chats)) {
    results[scenario] = await SCENARIOS[scenario](clients, config, chatId);
  }
  return results;
});
