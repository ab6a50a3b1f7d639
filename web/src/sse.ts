// Server-sent events read from a fetch body (EventSource cannot send the Authorization
// header). Yields each event as it arrives; comment lines (pings) are skipped.
import { rawFetch } from "./api/client";

export interface SseEvent {
  event: string;
  data: string;
  id: string | null;
}

export async function* readEvents(body: ReadableStream<Uint8Array>): AsyncGenerator<SseEvent> {
  const reader = body.pipeThrough(new TextDecoderStream() as ReadableWritablePair<string, Uint8Array>).getReader();
  let buffer = "";
  let event = "message";
  let data: string[] = [];
  let id: string | null = null;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let newline: number;
      while ((newline = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + (buffer.startsWith("\r\n", newline) ? 2 : 1));
        if (line === "") {
          if (data.length) yield { event, data: data.join("\n"), id };
          event = "message";
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const name = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) text = text.slice(1);
        if (name === "event") event = text;
        else if (name === "data") data.push(text);
        else if (name === "id") id = text;
      }
    }
  } finally {
    reader.releaseLock();
  }
}

/** POST `body` as JSON to a streaming endpoint and yield its events. */
export async function* streamPost(path: string, body: unknown, signal: AbortSignal): AsyncGenerator<SseEvent> {
  const response = await rawFetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
    body: JSON.stringify(body),
    signal,
  });
  if (!response.body) return;
  yield* readEvents(response.body);
}

/** GET a job's event stream (`progress`..., then `done`). */
export async function* streamGet(path: string, signal: AbortSignal): AsyncGenerator<SseEvent> {
  const response = await rawFetch(path, { headers: { Accept: "text/event-stream" }, signal });
  if (!response.body) return;
  yield* readEvents(response.body);
}
