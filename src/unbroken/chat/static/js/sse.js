// Server-Sent Events over fetch: a parser for a ReadableStream of bytes.
//
// EventSource cannot POST and cannot choose where a resume starts, so the page reads SSE
// itself. The parser follows the WHATWG "event stream interpretation" rules: lines end in
// CRLF, LF or CR (a CR at the end of one network read may be followed by an LF in the next),
// comment lines start with ":", "data" lines of one event are joined with "\n", and an event
// is dispatched at a blank line. Each yielded event carries the `id` its own block set (null
// when it set none), so callers can track the last sequence number they actually received.

const decoderOptions = { fatal: false };

/**
 * Yield `{id, event, data}` for every event in `body` (a ReadableStream of bytes).
 * Throws what the stream throws (a network error); returns at the end of the body.
 * An event still being assembled when the body ends is dropped, as the spec says.
 */
export async function* readEvents(body, signal) {
  const reader = body.getReader();
  const decoder = new TextDecoder("utf-8", decoderOptions);
  let buffer = "";
  let data = [];
  let id = null;
  let event = null;
  let hasData = false;

  const onAbort = () => reader.cancel().catch(() => {});
  signal?.addEventListener("abort", onAbort, { once: true });
  try {
    for (;;) {
      const { value, done } = await reader.read();
      buffer += done ? decoder.decode() : decoder.decode(value, { stream: true });
      let start = 0;
      for (;;) {
        let end = -1;
        let next = -1;
        for (let i = start; i < buffer.length; i++) {
          const c = buffer.charCodeAt(i);
          if (c === 10) {
            end = i;
            next = i + 1;
            break;
          }
          if (c === 13) {
            // A CR at the end of a read may be the first half of CRLF: wait for the next
            // read, unless there is none.
            if (i + 1 >= buffer.length && !done) break;
            end = i;
            next = buffer.charCodeAt(i + 1) === 10 ? i + 2 : i + 1;
            break;
          }
        }
        if (end < 0) break;
        const line = buffer.slice(start, end);
        start = next;
        if (line === "") {
          if (hasData) yield { id, event: event ?? "message", data: data.join("\n") };
          data = [];
          id = null;
          event = null;
          hasData = false;
          continue;
        }
        if (line.charCodeAt(0) === 58) continue; // ":" comment (keep-alive)
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val.charCodeAt(0) === 32) val = val.slice(1);
        if (field === "data") {
          data.push(val);
          hasData = true;
        } else if (field === "id") {
          if (!val.includes("\0")) id = val;
        } else if (field === "event") {
          event = val;
        }
        // "retry" and unknown fields are ignored: the page schedules its own reconnects.
      }
      buffer = buffer.slice(start);
      if (done) return;
    }
  } finally {
    signal?.removeEventListener("abort", onAbort);
    // Stopping early (the caller broke out of the loop) must close the connection too.
    reader.cancel().catch(() => {});
  }
}
