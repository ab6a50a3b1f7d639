// Chat: a conversation with one model, streamed token by token over SSE
// (POST /gateway/chat/stream). Stop aborts the request: the gateway stores the run
// `cancelled` with what was written so far.
import type { Schemas } from "../api/client";
import { field, fmt, h, replace } from "../dom";
import { modelNames, modelSelect } from "../models";
import { href, type Page } from "../router";
import { streamPost } from "../sse";
import { errorBox, heading } from "../ui";

type Message = Schemas["PromptMessage"] | Schemas["ReplyMessage"];

interface Turn {
  prompt: string;
  answer: string;
  model: string;
  stats: string;
  resultId: string | null;
  state: "streaming" | "done" | "cancelled" | "failed";
}

// The conversation outlives a visit to another page (this tab only).
const conversation: { turns: Turn[]; history: Message[]; model: string | undefined } = {
  turns: [],
  history: [],
  model: undefined,
};

export interface Timing {
  ttft: number | null;
  tokensPerSecond: number | null;
  tokens: number | null;
}

export function timingOf(result: Schemas["ResultOut"], started: number, firstAt: number | null): Timing {
  const meta = (result.metadata ?? {}) as Record<string, unknown>;
  const num = (v: unknown) => (typeof v === "number" ? v : null);
  return {
    ttft: num(meta["time_to_first_token"]) ?? (firstAt !== null ? (firstAt - started) / 1000 : null),
    tokensPerSecond: num(meta["tokens_per_second"]),
    tokens: result.tokens_used ?? null,
  };
}

export function timingText(t: Timing): string {
  return `TTFT ${fmt(t.ttft, 2, " s")} · ${fmt(t.tokensPerSecond, 1, " tokens/s")} · ${t.tokens ?? "–"} tokens`;
}

function turnView(turn: Turn): HTMLElement {
  return h(
    "article",
    { class: `turn ${turn.state}`, "aria-label": `Answer from ${turn.model}` },
    h("p", { class: "prompt" }, h("strong", {}, "You: "), turn.prompt),
    h("div", { class: "answer", "data-testid": "answer" }, turn.answer),
    h(
      "p",
      { class: "stats" },
      turn.state === "streaming" ? "streaming…" : turn.stats,
      turn.resultId ? [" · ", h("a", { href: href(`results/${turn.resultId}`) }, `result ${turn.resultId.slice(0, 8)}`)] : null,
    ),
  );
}

export const chatPage: Page = {
  path: "chat",
  title: "Chat",
  async render(main) {
    const names = await modelNames();
    const model = modelSelect(names, conversation.model);
    const temperature = h("input", { type: "number", min: 0, max: 2, step: 0.1, placeholder: "model default" });
    const maxTokens = h("input", { type: "number", min: 1, step: 1, placeholder: "model default" });
    const system = h("textarea", { rows: 2, placeholder: "optional" });
    const prompt = h("textarea", { rows: 3, required: true });
    const send = h("button", { type: "submit" }, "Send");
    const stop = h("button", { type: "button", disabled: true }, "Stop");
    const reset = h("button", { type: "button", class: "secondary" }, "New conversation");
    const log = h("section", { class: "conversation", "aria-label": "Conversation", "aria-live": "polite" });
    const errors = errorBox();
    let controller: AbortController | null = null;

    const redraw = () => replace(log, conversation.turns.map(turnView));
    redraw();

    stop.addEventListener("click", () => controller?.abort());
    reset.addEventListener("click", () => {
      conversation.turns = [];
      conversation.history = [];
      redraw();
    });

    const form = h(
      "form",
      {
        class: "card",
        onsubmit: async (event: Event) => {
          event.preventDefault();
          const text = prompt.value.trim();
          if (!text || controller) return;
          errors.clear();
          conversation.model = model.value;
          const turn: Turn = { prompt: text, answer: "", model: model.value, stats: "", resultId: null, state: "streaming" };
          conversation.turns.push(turn);
          const messages: Message[] = [];
          if (system.value.trim()) messages.push({ role: "system", content: system.value.trim() });
          messages.push(...conversation.history, { role: "user", content: text });
          const options: Schemas["OptionsIn"] = {};
          if (temperature.value !== "") options.temperature = Number(temperature.value);
          if (maxTokens.value !== "") options.max_tokens = Number(maxTokens.value);
          const view = turnView(turn);
          log.appendChild(view);
          const answerEl = view.querySelector(".answer") as HTMLElement;
          prompt.value = "";
          controller = new AbortController();
          send.disabled = true;
          stop.disabled = false;
          const started = performance.now();
          let firstAt: number | null = null;
          try {
            for await (const ev of streamPost(
              "/gateway/chat/stream",
              { model: model.value, messages, options },
              controller.signal,
            )) {
              if (ev.event === "chunk") {
                const chunk = JSON.parse(ev.data) as Schemas["ChunkEvent"];
                if (firstAt === null && chunk.content) firstAt = performance.now();
                turn.answer += chunk.content;
                answerEl.textContent = turn.answer;
              } else if (ev.event === "result") {
                const result = JSON.parse(ev.data) as Schemas["ResultOut"];
                turn.answer = result.response;
                turn.resultId = result.id ?? null;
                turn.stats = timingText(timingOf(result, started, firstAt));
                turn.state = "done";
              } else if (ev.event === "error") {
                const error = JSON.parse(ev.data) as Schemas["ErrorEvent"];
                turn.state = "failed";
                turn.resultId = error.result_id ?? null;
                turn.stats = `failed: ${error.message}`;
                errors.show(`${error.code}: ${error.message}`);
              }
            }
            if (turn.state === "streaming") {
              turn.state = "failed";
              turn.stats = "the stream ended without a result";
            }
          } catch (error) {
            if (controller.signal.aborted) {
              turn.state = "cancelled";
              turn.stats = "stopped: stored as cancelled";
            } else {
              turn.state = "failed";
              turn.stats = "failed";
              errors.show(error);
            }
          } finally {
            controller = null;
            send.disabled = false;
            stop.disabled = true;
          }
          if (turn.state === "done" || turn.state === "cancelled") {
            conversation.history.push({ role: "user", content: text });
            conversation.history.push({ role: "assistant", content: turn.answer });
          }
          view.replaceWith(turnView(turn));
        },
      },
      h(
        "div",
        { class: "row" },
        field("Model", model),
        field("Temperature", temperature),
        field("Max tokens", maxTokens),
      ),
      field("System message", system),
      field("Prompt", prompt),
      h("div", { class: "buttons" }, send, stop, reset),
      errors.el,
    );
    prompt.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) form.requestSubmit();
    });
    replace(main, ...heading("Chat"), log, form);
    return () => controller?.abort();
  },
};
