// AI SDK 5/6/7: the real `useChat({ id, resume: true })` hook, rendered headless with
// react-test-renderer, picks up an answer in progress after a simulated page reload.
//
// Page 1 mounts `useChat`, sends a message, and is "reloaded" mid-answer: its connection is
// cut (as the browser does) and the tree unmounted. Page 2 is a fresh tree that mounts
// `useChat({ id, messages: stored, resume: true })`; on mount it calls GET .../stream and must
// end with the stored messages plus ONE complete assistant message.
//
// Two kinds of stored messages:
//   server: what the server had stored at the reload (GET {api}/{id}/messages): the user
//           message only, as the answer was still being generated;
//   client: what the page had locally: the user message and the partial assistant message
//           (the replay carries the same message id, so the client replaces it).
//
// config: { clientsDir, api, chats: { server?, client?, tabReturns? }, userText, timeoutMs? }

import { cuttableFetch, main, plain, renderHook, settle, storedChat, textOf, waitFor } from "./util.mjs";

async function reloadMidAnswer(clients, config, chatId, stored) {
  const { ai, aiReact } = clients;

  // Page 1.
  const fetch = cuttableFetch({ mode: "network" });
  const transport1 = new ai.DefaultChatTransport({ api: config.api, fetch });
  const page1 = renderHook(clients, () => aiReact.useChat({ id: chatId, transport: transport1 }));
  await waitFor(() => page1.current(), { what: "page 1 to render" });
  const sending = page1.current().sendMessage({ text: config.userText });
  const page1Messages = await waitFor(
    () => {
      const { messages } = page1.current();
      const last = messages.at(-1);
      return last?.role === "assistant" && textOf(last).length > 0 ? plain(messages) : null;
    },
    { what: "page 1 to show the first text of the answer" },
  );
  // The reload: the browser drops the connection and throws the page away.
  fetch.cutAll();
  page1.unmount();
  await sending.catch(() => {});

  // What a reloaded page would load: the server's stored messages (the answer is still being
  // generated, so only the user message is stored), or the page's own copy.
  const server = await storedChat(config.api, chatId);
  const storedMessages = stored === "server" ? server.messages : page1Messages;

  // Page 2: a fresh tree, a fresh Chat, the stored messages, resume on mount.
  const transport2 = new ai.DefaultChatTransport({ api: config.api });
  const statuses = [];
  const ended = [];
  const page2 = renderHook(clients, () => {
    const helpers = aiReact.useChat({
      id: chatId,
      messages: storedMessages,
      transport: transport2,
      resume: true,
      onFinish: ({ isAbort, isError }) => ended.push({ isAbort: isAbort ?? null, isError: isError ?? null }),
      onError: (error) => ended.push({ error: String(error) }),
    });
    if (statuses.at(-1) !== helpers.status) statuses.push(helpers.status);
    return helpers;
  });
  await waitFor(() => ended.length > 0, { what: "page 2's resume request to end" });
  await settle(() => ({ messages: page2.current().messages, status: page2.current().status }));
  const helpers = page2.current();
  const result = {
    storedMessages,
    activeStreamIdAtReload: server.activeStreamId,
    statuses,
    ended,
    error: helpers.error ? String(helpers.error) : null,
    messages: plain(helpers.messages),
  };
  page2.unmount();
  return result;
}

// tabReturns: no reload. The page's connection drops with a browser network error
// (`TypeError: network error`); when the tab becomes visible again, `useChat({resume: true})`
// resumes by itself (its `visibilitychange` handler) and must end with ONE clean message.
async function tabReturns(clients, config, chatId) {
  const { ai, aiReact } = clients;
  // Just enough of a browser `document` for useChat's visibility handling.
  const document = new EventTarget();
  document.visibilityState = "visible";
  globalThis.document = document;
  try {
    const fetch = cuttableFetch({ mode: "browser" });
    const transport = new ai.DefaultChatTransport({ api: config.api, fetch });
    const statuses = [];
    const page = renderHook(clients, () => {
      const helpers = aiReact.useChat({ id: chatId, transport, resume: true });
      if (statuses.at(-1) !== helpers.status) statuses.push(helpers.status);
      return helpers;
    });
    // On mount it tried to resume: nothing yet (204).
    await waitFor(() => fetch.requests.some((r) => r.method === "GET" && r.status === 204), {
      what: "the mount-time resume",
    });
    await waitFor(() => page.current()?.status === "ready", { what: "the page to be ready" });
    const sending = page.current().sendMessage({ text: config.userText });
    const partial = await waitFor(
      () => {
        const last = page.current().messages.at(-1);
        return last?.role === "assistant" && textOf(last).length > 0 ? plain(last) : null;
      },
      { what: "the first text of the answer" },
    );
    fetch.cutAll();
    await sending.catch(() => {});
    await waitFor(() => page.current().status === "error", { what: "the page to see the disconnect" });
    const errorAfterCut = String(page.current().error);
    const requestsBefore = fetch.requests.length;
    const statusesBefore = statuses.length;
    document.dispatchEvent(new Event("visibilitychange"));
    await waitFor(() => fetch.requests.length > requestsBefore, { what: "the automatic resume request" });
    await waitFor(
      () => statuses.slice(statusesBefore).includes("streaming") && ["ready", "error"].includes(page.current().status),
      { what: "the automatic resume to end" },
    );
    await settle(() => ({ messages: page.current().messages, status: page.current().status }));
    const helpers = page.current();
    const result = {
      partial,
      errorAfterCut,
      statuses,
      requests: fetch.requests,
      status: helpers.status,
      error: helpers.error ? String(helpers.error) : null,
      messages: plain(helpers.messages),
    };
    page.unmount();
    return result;
  } finally {
    delete globalThis.document;
  }
}

main(async (config, clients) => {
  const results = {};
  for (const [scenario, chatId] of Object.entries(config.chats)) {
    results[scenario] =
      scenario === "tabReturns"
        ? await tabReturns(clients, config, chatId)
        : await reloadMidAnswer(clients, config, chatId, scenario);
  }
  return results;
});
