// AI SDK 4: the real v4 `useChat` (@ai-sdk/react 1.2.12) with `experimental_resume()` and the
// seed's `useAutoResume` hook (copied below as the seed wrote it), rendered headless with
// react-test-renderer. Each "page" gets its own SWR cache, as a page reload does.
//
// live:     page 1 sends a message and is reloaded mid-answer; page 2 mounts with the stored
//           messages ([user]); `useAutoResume` calls `experimental_resume()` (GET
//           /api/chat?chatId=), which replays the answer still being generated.
// finished: the answer ends before page 2 mounts; the resume GET answers
//           `2:[{"type":"append-message","message":"..."}]` and `useAutoResume` swaps the
//           stored assistant message in with `setMessages([...initialMessages, message])`.
// idle:     nothing to resume (a chat with no stream): 200 with an empty body, no error.
//
// config: { clientsDir, api, chats: { live, finished, idle }, userText, timeoutMs? }

import { cuttableFetch, main, plain, renderHook, settle, waitFor } from "./util.mjs";

// The seed's hook (shared/seeds/000_*.txt), verbatim but for the imports and types.
function makeUseAutoResume({ useEffect }) {
  return function useAutoResume({ initialMessages, experimental_resume, data, setMessages }) {
    useEffect(() => {
      const mostRecentMessage = initialMessages.at(-1);
      if (mostRecentMessage?.role === "user") {
        experimental_resume();
      }
      // we intentionally run this once
    }, []);

    useEffect(() => {
      if (!data) return;
      if (data.length === 0) return;
      const dataPart = data[0];
      if (dataPart.type === "append-message") {
        const message = JSON.parse(dataPart.message);
        setMessages([...initialMessages, message]);
      }
    }, [data, initialMessages, setMessages]);
  };
}

function newPage(clients, useHook) {
  const { React, swr } = clients;
  // A fresh SWR cache per page: v4 `useChat` keeps its state in SWR, keyed by chat id.
  const cache = new Map();
  return renderHook(clients, useHook, {
    wrap: (element) => React.createElement(swr.SWRConfig, { value: { provider: () => cache } }, element),
  });
}

function pageWithAutoResume(clients, config, chatId, initialMessages) {
  const { aiReact, React } = clients;
  const useAutoResume = makeUseAutoResume(React);
  const statuses = [];
  const ended = [];
  const page = newPage(clients, () => {
    const helpers = aiReact.useChat({
      id: chatId,
      api: config.api,
      initialMessages,
      onFinish: () => ended.push("finish"),
      onError: (error) => ended.push(`error: ${error}`),
    });
    useAutoResume({
      initialMessages,
      experimental_resume: helpers.experimental_resume,
      data: helpers.data,
      setMessages: helpers.setMessages,
    });
    if (statuses.at(-1) !== helpers.status) statuses.push(helpers.status);
    return helpers;
  });
  return { page, statuses, ended };
}

async function snapshot(page, statuses, ended) {
  // Effects (like useAutoResume's setMessages) run after the render that settled the status.
  await settle(() => ({ messages: page.current().messages, status: page.current().status }));
  const helpers = page.current();
  return {
    statuses,
    ended,
    status: helpers.status,
    error: helpers.error ? String(helpers.error) : null,
    data: plain(helpers.data ?? null),
    messages: plain(helpers.messages),
  };
}

async function firstPage(clients, config, chatId, { waitForEnd }) {
  const { aiReact } = clients;
  const fetch = cuttableFetch({ mode: "network" });
  const page = newPage(clients, () => aiReact.useChat({ id: chatId, api: config.api, fetch }));
  await waitFor(() => page.current(), { what: "page 1 to render" });
  const sending = page.current().append({ role: "user", content: config.userText });
  let messages;
  if (waitForEnd) {
    await sending;
    messages = plain(page.current().messages);
  } else {
    messages = await waitFor(
      () => {
        const current = page.current().messages;
        const last = current.at(-1);
        return last?.role === "assistant" && last.content.length > 0 ? plain(current) : null;
      },
      { what: "page 1 to show the first text of the answer" },
    );
    fetch.cutAll();
  }
  page.unmount();
  await sending.catch(() => {});
  return messages;
}

async function live(clients, config, chatId) {
  const page1Messages = await firstPage(clients, config, chatId, { waitForEnd: false });
  const initialMessages = page1Messages.slice(0, 1);
  const { page, statuses, ended } = pageWithAutoResume(clients, config, chatId, initialMessages);
  await waitFor(() => ended.length > 0, { what: "page 2 to resume the live answer and finish" });
  const result = { page1Messages, initialMessages, ...(await snapshot(page, statuses, ended)) };
  page.unmount();
  return result;
}

async function finished(clients, config, chatId) {
  const page1Messages = await firstPage(clients, config, chatId, { waitForEnd: true });
  const initialMessages = page1Messages.slice(0, 1);
  const { page, statuses, ended } = pageWithAutoResume(clients, config, chatId, initialMessages);
  await waitFor(() => ended.length > 0, { what: "page 2's resume request to end" });
  const result = { page1Messages, initialMessages, ...(await snapshot(page, statuses, ended)) };
  page.unmount();
  return result;
}

async function idle(clients, config, chatId) {
  const initialMessages = [
    { id: `${chatId}-user`, role: "user", content: config.userText, parts: [{ type: "text", text: config.userText }] },
  ];
  const { page, statuses, ended } = pageWithAutoResume(clients, config, chatId, initialMessages);
  await waitFor(() => ended.length > 0, { what: "the resume request to end" });
  const result = { initialMessages, ...(await snapshot(page, statuses, ended)) };
  page.unmount();
  return result;
}

main(async (config, clients) => ({
  live: await live(clients, config, config.chats.live),
  finished: await finished(clients, config, config.chats.finished),
  idle: await idle(clients, config, config.chats.idle),
}));
