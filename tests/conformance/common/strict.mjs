// Feed an SSE body produced by unbroken's encoder (every chunk type it emits by default)
// through the real client's strict parser: `DefaultChatTransport` (zod schema of
// `uiMessageChunkSchema`; ai@5.0.0 rejects unknown fields and unknown types) and
// `readUIMessageStream` (ordering rules). The body is served by a `fetch` stand-in, so the
// bytes are exactly the encoder's.
//
// Every rejected event is reported (the event is dropped and the rest is fed again), so one
// run names all offenders.
//
// config: { clientsDir, headers: {...},
//           cases: { <name>: { body: "<SSE text>", expectedErrors?: [errorText] } }, timeoutMs? }

import { assemble, main, recorder } from "./util.mjs";

function splitEvents(body) {
  return body
    .replace(/\r\n/g, "\n")
    .split(/\n\n/)
    .filter((event) => event.trim() !== "")
    .map((event) => `${event}\n\n`);
}

const isDataChunk = (event) =>
  event.split("\n").some((line) => line.startsWith("data:") && line.slice(5).trim() !== "[DONE]");

async function feed(ai, events, headers, expectedErrors) {
  const body = events.join("");
  const transport = new ai.DefaultChatTransport({
    api: "http://conformance.invalid/api/chat",
    fetch: async () => new Response(body, { status: 200, headers }),
  });
  const stream = await transport.sendMessages({
    trigger: "submit-message",
    chatId: "strict",
    messageId: undefined,
    messages: [],
    abortSignal: undefined,
  });
  const chunks = [];
  const assembled = await assemble(ai, stream.pipeThrough(recorder(chunks)));
  // An `error` chunk is reported through onError as `new Error(errorText)`: expected ones
  // are the stream's own errors, not rejections.
  const reported = assembled.errors.filter((error) => expectedErrors.includes(error.error));
  const errors = assembled.errors.filter((error) => !expectedErrors.includes(error.error));
  return { chunks, ...assembled, errors, reported };
}

// zod's union report lists every member of the union: keep the first lines.
const brief = (text) => (text.length > 400 ? `${text.slice(0, 400)}…` : text);

async function check(ai, { body, headers = {}, expectedErrors = [] }) {
  const expected = expectedErrors.map((text) => `Error: ${text}`);
  let events = splitEvents(body);
  const rejected = [];
  const first = await feed(ai, events, headers, expected);
  let run = first;
  for (let round = 0; round < 50 && run.errors.length > 0; round += 1) {
    // Which data event failed: a schema failure stops before recording the chunk; a
    // processing failure happens after the chunk was recorded.
    const error = run.errors[0];
    const schemaFailure = /TypeValidation|Type validation/i.test(error.error);
    const failingData = schemaFailure ? run.chunks.length : run.chunks.length - 1;
    const dataEvents = events.map((event, index) => [event, index]).filter(([event]) => isDataChunk(event));
    const entry = dataEvents[failingData];
    if (!entry) {
      rejected.push({ event: null, error: brief(error.error) });
      break;
    }
    rejected.push({ event: entry[0].trim(), error: brief(error.error), kind: schemaFailure ? "schema" : "processing" });
    events = events.filter((_, index) => index !== entry[1]);
    run = await feed(ai, events, headers, expected);
  }
  return {
    accepted: first.errors.length === 0,
    rejected,
    chunkTypes: first.chunks.map((chunk) => chunk.type),
    message: first.message,
    errors: first.errors.map((error) => brief(error.error)),
    reportedErrors: first.reported.map((error) => error.error),
  };
}

main(async (config, { ai }) => {
  const results = {};
  for (const [name, check_] of Object.entries(config.cases)) {
    results[name] = await check(ai, { headers: config.headers, ...check_ });
  }
  return results;
});
