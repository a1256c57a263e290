// AI SDK 5/6/7: the real `DefaultChatTransport` + `readUIMessageStream` against the server.
//
// 1. `sendMessages` (POST) is read to the end and assembled into a UI message;
// 2. while it streams, a concurrent `reconnectToStream` (GET .../stream) replays the same
//    answer from the first chunk: the assembled message must be identical;
// 3. after the end, `reconnectToStream` returns null (the server answers 204).
//
// config: { clientsDir, api, chatId, userMessage, target?, timeoutMs? }
//   target: ask the server to fit the stream to this `ai` version (`?target=`, added by the
//   fetch so every client version builds its URLs as usual).

import { assemble, main, plain, recorder, sleep } from "./util.mjs";

main(async (config, { ai }) => {
  const fetchWithTarget = async (url, init) => {
    const target = config.target ? `${url.includes("?") ? "&" : "?"}target=${config.target}` : "";
    return fetch(`${url}${target}`, init);
  };
  const transport = new ai.DefaultChatTransport({ api: config.api, fetch: fetchWithTarget });
  const postChunks = [];
  const resumeChunks = [];

  const postStream = await transport.sendMessages({
    trigger: "submit-message",
    chatId: config.chatId,
    messageId: undefined,
    messages: [config.userMessage],
    abortSignal: undefined,
  });

  let startResume;
  const firstSnapshot = new Promise((resolve) => {
    startResume = resolve;
  });
  const post = assemble(ai, postStream.pipeThrough(recorder(postChunks)), {
    onSnapshot: (message, n) => {
      if (n === 1) startResume(message);
    },
  });

  // The reconnect starts once the POST has delivered its first snapshot: mid-stream.
  const resume = firstSnapshot.then(async (snapshotAtReconnect) => {
    const chunksBeforeReconnect = postChunks.length;
    const stream = await transport.reconnectToStream({ chatId: config.chatId });
    if (stream == null) return { stream: null, chunksBeforeReconnect, snapshotAtReconnect };
    const assembled = await assemble(ai, stream.pipeThrough(recorder(resumeChunks)));
    return { stream: "replayed", chunksBeforeReconnect, snapshotAtReconnect, ...assembled };
  });

  const [postResult, resumeResult] = await Promise.all([post, resume]);

  // After the end: nothing to resume. The server clears the active stream when generation
  // ends, which may land a moment after the last chunk reached us: poll briefly.
  const afterEnd = [];
  for (let attempt = 0; attempt < 50; attempt += 1) {
    const stream = await transport.reconnectToStream({ chatId: config.chatId });
    if (stream == null) {
      afterEnd.push("null");
      break;
    }
    const chunks = [];
    await assemble(ai, stream.pipeThrough(recorder(chunks)));
    afterEnd.push(`replay of ${chunks.length} chunks`);
    await sleep(20);
  }

  return {
    post: { ...postResult, chunks: postChunks },
    resume: { ...resumeResult, chunks: resumeChunks },
    afterEnd,
    transportClass: plain(transport.constructor.name),
  };
});
