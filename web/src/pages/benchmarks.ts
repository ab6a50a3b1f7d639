// Benchmarks: start one per chosen model (each a job, POST /gateway/benchmarks with
// background), follow each job's progress (SSE), then plot tokens/s and TTFT per prompt,
// one line per model. Stored benchmarks are listed as links and open at /ui/benchmarks/<id>.
import { api, unwrap, type Schemas } from "../api/client";
import { lineChart, type Chart } from "../charts";
import { field, fmt, h, progressBar, replace, when } from "../dom";
import { checkedModels, modelNames, modelPicker } from "../models";
import { href, type Page } from "../router";
import { streamGet } from "../sse";
import { errorBox, heading, table } from "../ui";

const DEFAULT_PROMPTS = ["Explain what a hash map is.", "Write a haiku about the sea.", "List three prime numbers.", "What is HTTP?"];

function metric(run: Schemas["StoredResult"], key: string): number | null {
  const value = (run.metadata ?? {})[key];
  return typeof value === "number" ? value : null;
}

function benchmarkName(item: Schemas["ReportSummary"]): string {
  return `Benchmark of ${item.model ?? "?"}, ${when(item.created_at)}`;
}

/** The plots and table of stored benchmarks (one line per benchmark's model). */
function plots(details: Schemas["ReportDetail"][]): { nodes: HTMLElement[]; charts: Chart[] } {
  const longest = Math.max(0, ...details.map((d) => d.runs.length));
  const xs = Array.from({ length: longest }, (_, i) => i + 1);
  const label = (d: Schemas["ReportDetail"]) => d.model ?? d.id;
  const models = details.map(label).join(", ");
  const speed = lineChart(
    `Line chart of tokens per second for each prompt, per model: ${models}`,
    "prompt",
    "tokens/s",
    xs,
    details.map((d) => ({ name: label(d), values: xs.map((x) => (d.runs[x - 1] ? metric(d.runs[x - 1] as Schemas["StoredResult"], "tokens_per_second") : null)) })),
  );
  const ttft = lineChart(
    `Line chart of time to first token in seconds for each prompt, per model: ${models}`,
    "prompt",
    "TTFT (s)",
    xs,
    details.map((d) => ({ name: label(d), values: xs.map((x) => (d.runs[x - 1] ? metric(d.runs[x - 1] as Schemas["StoredResult"], "time_to_first_token") : null)) })),
  );
  const rows = details.flatMap((d) =>
    d.runs.map((run, i) => [
      label(d),
      String(i + 1),
      run.prompt,
      fmt(metric(run, "tokens_per_second"), 1),
      fmt(metric(run, "time_to_first_token"), 3),
      run.tokens_used != null ? String(run.tokens_used) : "–",
      run.status,
    ]),
  );
  return {
    nodes: [
      h("h3", {}, "Tokens per second, per prompt"),
      speed.el,
      h("h3", {}, "Time to first token, per prompt"),
      ttft.el,
      table("Each run", ["Model", "#", "Prompt", "Tokens/s", "TTFT (s)", "Tokens", "Status"], rows),
    ],
    charts: [speed, ttft],
  };
}

async function follow(job: Schemas["JobOut"], bar: ReturnType<typeof progressBar>, signal: AbortSignal): Promise<Schemas["JobOut"]> {
  let last = job;
  bar.set(job.completed, job.total);
  let done = 0;
  for await (const ev of streamGet(`/gateway/jobs/${encodeURIComponent(job.id)}/events`, signal)) {
    if (ev.event === "progress") {
      done += 1;
      bar.set(done, job.total);
    } else if (ev.event === "done") {
      last = JSON.parse(ev.data) as Schemas["JobOut"];
      bar.set(last.completed, last.total);
    }
  }
  return last;
}

export const benchmarksPage: Page = {
  path: "benchmarks",
  title: "Benchmarks",
  async render(main, _params, rest) {
    const controller = new AbortController();
    let charts: Chart[] = [];
    const results = h("section", { class: "plots", "aria-label": "Benchmark plots" });
    const errors = errorBox();
    const earlier = h("section", { "aria-label": "Earlier benchmarks" });

    const show = async (ids: string[]) => {
      const details = await Promise.all(
        ids.map(async (id) => unwrap(await api.GET("/gateway/benchmarks/{benchmark_id}", { params: { path: { benchmark_id: id } } }))),
      );
      charts.forEach((c) => c.destroy());
      const made = plots(details);
      charts = made.charts;
      replace(results, h("h2", {}, details.length === 1 ? benchmarkName(details[0] as Schemas["ReportSummary"]) : "Benchmark results"), made.nodes);
    };

    const listEarlier = async () => {
      const page = unwrap(await api.GET("/gateway/benchmarks", { params: { query: { limit: 20 } } }));
      replace(
        earlier,
        h("h2", {}, "Earlier benchmarks"),
        page.items.length
          ? h("ul", { class: "links" }, page.items.map((item) => h("li", {}, h("a", { href: href(`benchmarks/${item.id}`) }, benchmarkName(item)))))
          : h("p", {}, "None yet."),
      );
    };

    const names = await modelNames();
    const picks = modelPicker(names, "Models", 1);
    const prompts = h("textarea", { rows: 5 }, DEFAULT_PROMPTS.join("\n"));
    const start = h("button", { type: "submit" }, "Start benchmark");
    const progress = h("section", { class: "jobs", "aria-label": "Progress" });

    const form = h(
      "form",
      {
        class: "card",
        onsubmit: async (event: Event) => {
          event.preventDefault();
          errors.clear();
          const models = checkedModels(picks);
          const testPrompts = prompts.value.split("\n").map((p) => p.trim()).filter(Boolean);
          if (!models.length || !testPrompts.length) {
            errors.show("Pick at least one model and write at least one prompt.");
            return;
          }
          start.disabled = true;
          replace(progress);
          try {
            const finished = await Promise.all(
              models.map(async (model) => {
                const answer = await api.POST("/gateway/benchmarks", {
                  body: { model, test_prompts: testPrompts, background: true },
                });
                const job = unwrap(answer) as Schemas["JobOut"];
                const bar = progressBar(`Benchmark of ${model}`);
                progress.appendChild(h("div", { class: "job" }, h("span", {}, `Benchmark of ${model}`), bar.el));
                return follow(job, bar, controller.signal);
              }),
            );
            const ids = finished.map((j) => j.benchmark_id).filter((id): id is string => !!id);
            const failed = finished.filter((j) => j.status !== "succeeded");
            if (failed.length) errors.show(failed.map((j) => `${j.subject}: ${j.status}${j.error ? ` (${j.error})` : ""}`).join("\n"));
            if (ids.length) await show(ids);
            await listEarlier();
          } catch (error) {
            if (!controller.signal.aborted) errors.show(error);
          } finally {
            start.disabled = false;
          }
        },
      },
      picks,
      field("Test prompts (one per line)", prompts),
      h("div", { class: "buttons" }, start),
      progress,
      errors.el,
    );

    replace(main, ...heading("Benchmarks", "Run test prompts on one or more models and plot their speed."), form, results, earlier);
    const opened = rest[0];
    if (opened) {
      try {
        await show([opened]);
      } catch (error) {
        errors.show(error);
      }
    }
    await listEarlier();
    return () => {
      controller.abort();
      charts.forEach((c) => c.destroy());
    };
  },
};
