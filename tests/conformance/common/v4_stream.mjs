// AI SDK 4: `callChatApi` from `@ai-sdk/ui-utils` 1.x (what v4 `useChat` calls) against the
// server's data stream protocol.
//
// 1. POST (a v4 body: no `trigger`) is read to the end: the client parses every line (an
//    unknown code or a malformed payload throws) and assembles the assistant message;
// 2. while it streams, a concurrent resume (`requestType: "resume"`: GET /api/chat?chatId=)
//    replays the same answer: the assembled message must be identical;
// 3. after the end, a resume answers the just-finished message as
//    `2:[{"type":"append-message","message":"..."}]` (the seed's fallback);
// 4. a resume for a chat with nothing to resume is a 200 with an empty body (no error).
//
// config: { clientsDir, api, chatId, idleChatId, userMessage, timeoutMs? }

import { main, plain } from "./util.mjs";

function recordingFetch(log) {
  return async (url, init = {}) => {
    const response = await fetch(url, init);
    const entry = {
      method: init.method ?? "GET",
      url: String(url),
      status: response.status,
      headers: Object.fromEntries(response.headers.entries()),
      body: null,
    };
    log.push(entry);
    const copy = response.clone();
    entry.bodyPromise = copy.text().then((text) => {
      entry.body = text;
    });
    return response;
  };
}

async function call(uiUtils, config, { chatId, messages, requestType, onFirstUpdate }) {
  const log = [];
  const updates = [];
  let finished = null;
  let error = null;
  let data = [];
  let first = true;
  try {
    await uiUtils.callChatApi({
      api: config.api,
      body: { id: chatId, messages },
      streamProtocol: "data",
      credentials: undefined,
      headers: {},
      abortController: () => new AbortController(),
      restoreMessagesOnFailure: () => {},
      onResponse: undefined,
      onUpdate: ({ message, data: newData, replaceLastMessage }) => {
        updates.push({ replaceLastMessage });
        data = plain(newData);
        if (first && onFirstUpdate) {
          first = false;
          onFirstUpdate(plain(message));
        }
      },
      onFinish: (message, { finishReason, usage }) => {
        finished = { message: plain(message), finishReason, usage: plain(usage) };
      },
      onToolCall: undefined,
      generateId: () => "client-generated-id",
      fetch: recordingFetch(log),
      lastMessage: messages.at(-1),
      requestType,
    });
  } catch (caught) {
    error = String(caught);
  }
  await Promise.all(log.map((entry) => entry.bodyPromise));
  for (const entry of log) delete entry.bodyPromise;
  return { error, updates: updates.length, data, finished, http: log };
}

main(async (config, { uiUtils }) => {
  const messages = [config.userMessage];
  let startResume;
  const firstUpdate = new Promise((resolve) => {
    startResume = resolve;
  });
  const post = call(uiUtils, config, {
    chatId: config.chatId,
    messages,
    requestType: "generate",
    onFirstUpdate: (message) => startResume(message),
  });
  const resume = firstUpdate.then((snapshotAtResume) =>
    call(uiUtils, config, { chatId: config.chatId, messages, requestType: "resume" }).then((result) => ({
      snapshotAtResume,
      ...result,
    })),
  );
  const [postResult, resumeResult] = await Promise.all([post, resume]);
  const afterEnd = await call(uiUtils, config, { chatId: config.chatId, messages, requestType: "resume" });
  const idle = await call(uiUtils, config, {
    chatId: config.idleChatId,
    messages: [{ ...config.userMessage, id: `${config.userMessage.id}-idle` }],
    requestType: "resume",
  });
  return { post: postResult, resume: resumeResult, afterEnd, idle };
});
