// Backends and models (admin): each backend's health, circuit, load, queue and loaded
// models, asked again every 2 s; a chart of requests finished per second, in flight and
// queued over the last five minutes, from the gateway's own samples
// (/gateway/backends/history, so the minutes before the page opened show too); add and
// remove backends; pull and delete models.
import { api, unwrap, type Schemas } from "../api/client";
import { updatableTimeChart } from "../charts";
import { field, h, replace } from "../dom";
import { href, type Page } from "../router";
import { errorBox, every, heading, status, table } from "../ui";

const WINDOW_SECONDS = 300;

function formatSize(bytes: number): string {
  if (bytes >= 1e9) return `${(bytes / 1e9).toFixed(1)} GB`;
  if (bytes >= 1e6) return `${(bytes / 1e6).toFixed(0)} MB`;
  return `${bytes} B`;
}

function backendRow(b: Schemas["BackendOut"], remove: (name: string) => void): (string | Node)[] {
  return [
    h("span", {}, h("strong", {}, b.name), h("br"), h("small", {}, b.url)),
    b.healthy ? "healthy" : `down${b.error ? `: ${b.error}` : ""}`,
    b.circuit,
    `${b.outstanding}${b.max_concurrency ? ` / ${b.max_concurrency}` : ""}`,
    String(b.queued),
    (b.loaded ?? []).join(", ") || "–",
    (b.models ?? []).join(", ") || "–",
    h("button", { type: "button", "aria-label": `Remove backend ${b.name}`, onclick: () => remove(b.name) }, "Remove"),
  ];
}

export const backendsPage: Page = {
  path: "backends",
  title: "Backends",
  admin: true,
  async render(main) {
    const errors = errorBox();
    const note = status();
    const list = h("section", { "aria-label": "Backends list" });
    const models = h("section", { "aria-label": "Models" });
    const chart = updatableTimeChart(
      "Line chart of requests finished per second, requests in flight and requests queued on all backends over the last five minutes",
      ["finished/s", "in flight", "queued"],
    );
    const loadNote = h("p", { class: "load-summary" });

    const refreshLoad = async () => {
      const { samples } = unwrap(await api.GET("/gateway/backends/history", { params: { query: { minutes: WINDOW_SECONDS / 60 } } }));
      const sum = (loads: Record<string, { running: number; queued: number; finished: number }>, key: "running" | "queued" | "finished") =>
        Object.values(loads).reduce((n, b) => n + b[key], 0);
      const finished = samples.map((s) => sum(s.backends, "finished"));
      chart.update(
        samples.map((s) => Date.parse(s.at) / 1000),
        [
          samples.map((s, i) => Math.round(((finished[i] ?? 0) / Math.max(s.seconds, 0.001)) * 10) / 10),
          samples.map((s) => sum(s.backends, "running")),
          samples.map((s) => sum(s.backends, "queued")),
        ],
      );
      const total = finished.reduce((n, f) => n + f, 0);
      loadNote.textContent = `${total} requests finished in the last ${WINDOW_SECONDS / 60} minutes.`;
    };

    const remove = async (name: string) => {
      errors.clear();
      try {
        unwrap(await api.DELETE("/gateway/backends/{backend}", { params: { path: { backend: name } } }));
        note.set(`Backend ${name} removed.`);
        await refresh();
      } catch (error) {
        errors.show(error);
      }
    };

    const refresh = async () => {
      try {
        const backends = unwrap(await api.GET("/gateway/backends"));
        await refreshLoad();
        replace(
          list,
          table(
            `${backends.length} backends`,
            ["Backend", "Health", "Circuit", "In flight", "Queued", "Loaded", "Installed", ""],
            backends.map((b) => backendRow(b, (name) => void remove(name))),
          ),
        );
      } catch (error) {
        errors.show(error);
      }
    };

    const refreshModels = async () => {
      try {
        const all = unwrap(await api.GET("/gateway/models"));
        replace(
          models,
          h("h2", {}, "Models"),
          table(
            `${all.length} models`,
            ["Model", "Size", "Backends", ""],
            all.map((m) => [
              m.name,
              formatSize(m.size),
              (m.backends ?? []).join(", "),
              h(
                "button",
                {
                  type: "button",
                  "aria-label": `Delete model ${m.name}`,
                  onclick: async () => {
                    if (!window.confirm(`Delete ${m.name} from every backend?`)) return;
                    try {
                      unwrap(await api.DELETE("/gateway/models/{name}", { params: { path: { name: m.name } } }));
                      note.set(`Model ${m.name} deleted.`);
                      await refreshModels();
                    } catch (error) {
                      errors.show(error);
                    }
                  },
                },
                "Delete",
              ),
            ]),
          ),
        );
      } catch (error) {
        errors.show(error);
      }
    };

    const spec = h("input", { type: "text", required: true, placeholder: "gpu2=http://10.0.0.6:11434;max=4", spellcheck: "false" });
    const addForm = h(
      "form",
      {
        class: "card",
        "aria-label": "Add a backend",
        onsubmit: async (event: Event) => {
          event.preventDefault();
          errors.clear();
          try {
            const added = unwrap(await api.POST("/gateway/backends", { body: { backend: spec.value.trim() } }));
            note.set(`Backend ${added.name} added.`);
            spec.value = "";
            await refresh();
          } catch (error) {
            errors.show(error);
          }
        },
      },
      h("h2", {}, "Add a backend"),
      field("Backend", spec, "As in GATEWAY_BACKENDS: [name=]url[;max=N][;weight=W][;tags=a,b]"),
      h("button", { type: "submit" }, "Add backend"),
    );

    const pullName = h("input", { type: "text", required: true, placeholder: "qwen2.5:0.5b", spellcheck: "false" });
    const pullForm = h(
      "form",
      {
        class: "card",
        "aria-label": "Pull a model",
        onsubmit: async (event: Event) => {
          event.preventDefault();
          errors.clear();
          try {
            const pull = unwrap(await api.POST("/gateway/pulls", { body: { model: pullName.value.trim() } }));
            note.set(`Pulling ${pull.model}: follow it on the Jobs page.`);
            pullName.value = "";
          } catch (error) {
            errors.show(error);
          }
        },
      },
      h("h2", {}, "Pull a model"),
      field("Model to pull", pullName),
      h("button", { type: "submit" }, "Pull"),
      h("p", {}, h("a", { href: href("jobs", { kind: "pull" }) }, "Pulls on the Jobs page")),
    );

    replace(
      main,
      ...heading("Backends", "The Ollama servers behind the gateway, as this process sees them (refreshed every 2 s)."),
      note.el,
      errors.el,
      list,
      h("h2", {}, "Load over the last minutes"),
      chart.el,
      loadNote,
      h("div", { class: "row" }, addForm, pullForm),
      models,
    );
    await refreshModels();
    const stop = every(2000, refresh);
    return () => {
      stop();
      chart.destroy();
    };
  },
};
