// Compare: one prompt on 2-4 models at once, each answer streamed in its own column
// (one POST /gateway/comparisons/stream: every model's pieces as they come, a `run` event
// as each ends, then the stored comparison), then a table and a bar chart of TTFT,
// tokens/s and tokens.
import type { Schemas } from "../api/client";
import { barChart, type Chart } from "../charts";
import { fmt, h, field, replace } from "../dom";
import { checkedModels, modelNames, modelPicker } from "../models";
import type { Page } from "../router";
import { streamPost } from "../sse";
import { errorBox, heading, table } from "../ui";
import { timingOf, timingText, type Timing } from "./chat";

interface Column {
  model: string;
  answer: HTMLElement;
  stats: HTMLElement;
  text: string;
  firstAt: number | null;
  timing: Timing | null;
  error: string | null;
}

/** Stream the comparison into `columns`; the stored comparison's id, if it was stored. */
async function runColumns(columns: Column[], prompt: string, signal: AbortSignal): Promise<string | null> {
  const started = performance.now();
  const byModel = new Map(columns.map((c) => [c.model, c]));
  let stored: string | null = null;
  try {
    const models = columns.map((c) => c.model);
    for await (const ev of streamPost("/gateway/comparisons/stream", { models, prompt }, signal)) {
      if (ev.event === "chunk") {
        const chunk = JSON.parse(ev.data) as Schemas["ModelChunkEvent"];
        const column = byModel.get(chunk.model);
        if (!column) continue;
        if (column.firstAt === null && chunk.content) column.firstAt = performance.now();
        column.text += chunk.content;
        column.answer.textContent = column.text;
      } else if (ev.event === "run") {
        const result = JSON.parse(ev.data) as Schemas["ResultOut"];
        const column = byModel.get(result.model_name);
        if (!column) continue;
        if (result.success) {
          column.answer.textContent = result.response;
          column.timing = timingOf(result, started, column.firstAt);
          column.stats.textContent = timingText(column.timing);
        } else {
          column.error = result.error_message ?? "failed";
        }
      } else if (ev.event === "comparison") {
        stored = (JSON.parse(ev.data) as Schemas["ReportOut"]).id;
      } else if (ev.event === "error") {
        const error = JSON.parse(ev.data) as Schemas["ErrorEvent"];
        for (const column of columns) column.error ??= `${error.code}: ${error.message}`;
      }
    }
  } catch (error) {
    for (const column of columns) {
      if (!column.timing) column.error ??= signal.aborted ? "stopped" : (error as Error).message;
    }
  }
  for (const column of columns) {
    if (column.error) column.stats.textContent = `failed: ${column.error}`;
  }
  return stored;
}

export const comparePage: Page = {
  path: "compare",
  title: "Compare",
  async render(main) {
    const names = await modelNames();
    const picks = modelPicker(names, "Models (2 to 4)", 2);
    const prompt = h("textarea", { rows: 3, required: true });
    const send = h("button", { type: "submit" }, "Compare");
    const stop = h("button", { type: "button", disabled: true }, "Stop");
    const columns = h("section", { class: "columns", "aria-label": "Answers" });
    const summary = h("section", { class: "summary", "aria-label": "Summary" });
    const errors = errorBox();
    let controller: AbortController | null = null;
    let charts: Chart[] = [];
    stop.addEventListener("click", () => controller?.abort());

    const form = h(
      "form",
      {
        class: "card",
        onsubmit: async (event: Event) => {
          event.preventDefault();
          errors.clear();
          const models = checkedModels(picks);
          if (models.length < 2 || models.length > 4) {
            errors.show("Pick 2 to 4 models.");
            return;
          }
          const text = prompt.value.trim();
          if (!text) return;
          charts.forEach((c) => c.destroy());
          charts = [];
          replace(summary);
          const cols: Column[] = models.map((model) => ({
            model,
            answer: h("div", { class: "answer", "data-testid": "answer" }),
            stats: h("p", { class: "stats" }, "streaming…"),
            text: "",
            firstAt: null,
            timing: null,
            error: null,
          }));
          replace(
            columns,
            cols.map((c) => h("article", { class: "column", "aria-label": `Answer from ${c.model}` }, h("h2", {}, c.model), c.answer, c.stats)),
          );
          controller = new AbortController();
          send.disabled = true;
          stop.disabled = false;
          const signal = controller.signal;
          const stored = await runColumns(cols, text, signal);
          controller = null;
          const outcome = stored
            ? `Stored as comparison ${stored}.`
            : signal.aborted
              ? "Stopped: the gateway keeps the comparison with its unfinished runs cancelled."
              : "Not stored.";
          send.disabled = false;
          stop.disabled = true;
          const rows = cols.map((c) => [
            c.model,
            fmt(c.timing?.ttft, 2),
            fmt(c.timing?.tokensPerSecond, 1),
            c.timing?.tokens != null ? String(c.timing.tokens) : "–",
            c.error ?? "ok",
          ]);
          const list = models.join(", ");
          const metrics: [string, string, (c: Column) => number | null][] = [
            ["time to first token in seconds", "TTFT (s)", (c) => c.timing?.ttft ?? null],
            ["tokens per second", "tokens/s", (c) => c.timing?.tokensPerSecond ?? null],
            ["tokens in the answer", "tokens", (c) => c.timing?.tokens ?? null],
          ];
          charts = metrics.map(([what, unit, value], i) =>
            barChart(`Bar chart of ${what} per model: ${list}`, models, unit, cols.map(value), i),
          );
          replace(
            summary,
            h("h2", {}, "Summary"),
            h("p", {}, outcome),
            table("Each model's answer", ["Model", "TTFT (s)", "Tokens/s", "Tokens", "Outcome"], rows),
            h("div", { class: "charts" }, charts.map((c) => c.el)),
          );
        },
      },
      picks,
      field("Prompt", prompt),
      h("div", { class: "buttons" }, send, stop),
      errors.el,
    );
    replace(main, ...heading("Compare", "One prompt on 2 to 4 models at once, side by side."), form, columns, summary);
    return () => {
      controller?.abort();
      charts.forEach((c) => c.destroy());
    };
  },
};
