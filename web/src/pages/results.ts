// Results: the stored runs with filters (model, surface, status, time) and cursor pages,
// all in the URL (/ui/results?model=...&cursor=...), and one run at /ui/results/<id>.
import { api, unwrap, type Paths, type Schemas } from "../api/client";
import { field, fmt, h, replace, when } from "../dom";
import { go, href, type Page } from "../router";
import { errorBox, heading, table } from "../ui";

type Query = NonNullable<Paths["/gateway/results"]["get"]["parameters"]["query"]>;

const SURFACES = ["", "gateway", "ollama", "openai", "anthropic", "responses", "transcription", "speech"] as const;
const STATUSES = [
  ["", "any"],
  ["true", "succeeded"],
  ["false", "failed or cancelled"],
] as const;

function toIso(local: string): string | undefined {
  if (!local) return undefined;
  const date = new Date(local);
  return Number.isNaN(date.getTime()) ? undefined : date.toISOString();
}

function toLocal(iso: string | null): string {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const pad = (n: number) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

function detailView(run: Schemas["StoredResult"]): HTMLElement[] {
  const meta = run.metadata ?? {};
  const options = (meta as Record<string, unknown>)["options"];
  const num = (k: string) => {
    const v = (meta as Record<string, unknown>)[k];
    return typeof v === "number" ? v : null;
  };
  const kept = (meta as Record<string, unknown>)["partial_response"];
  const partial = !run.response && typeof kept === "string" && kept ? kept : null;
  return [
    ...heading(`Result ${run.id}`),
    h("p", {}, h("a", { href: href("results") }, "All results")),
    h(
      "dl",
      { class: "detail" },
      [
        ["Model", run.model_name],
        ["Status", run.status],
        ["Kind", run.kind],
        ["Surface", run.surface ?? "–"],
        ["Backend", run.backend ?? "–"],
        ["Key", run.principal ?? "–"],
        ["Created", when(run.created_at)],
        ["Execution time", fmt(run.execution_time, 3, " s")],
        ["Time to first token", fmt(num("time_to_first_token"), 3, " s")],
        ["Tokens per second", fmt(num("tokens_per_second"), 1)],
        ["Tokens", run.tokens_used != null ? String(run.tokens_used) : "–"],
        ["Error", run.error_message ?? "–"],
      ].flatMap(([k, v]) => [h("dt", {}, k as string), h("dd", {}, v as string)]),
    ),
    h("h2", {}, "Prompt"),
    h("pre", { class: "text" }, run.prompt),
    h("h2", {}, partial ? "Answer (partial: the run did not finish)" : "Answer"),
    h("pre", { class: "text", "data-testid": "answer" }, partial ?? run.response),
    h("h2", {}, "Options"),
    h("pre", { class: "text" }, JSON.stringify(options ?? {}, null, 2)),
  ];
}

export const resultsPage: Page = {
  path: "results",
  title: "Results",
  async render(main, params, rest) {
    const errors = errorBox();
    const id = rest[0];
    if (id) {
      try {
        const run = unwrap(await api.GET("/gateway/results/{result_id}", { params: { path: { result_id: id } } }));
        replace(main, ...detailView(run));
      } catch (error) {
        replace(main, ...heading("Result"), h("p", {}, h("a", { href: href("results") }, "All results")), errors.el);
        errors.show(error);
      }
      return;
    }
    const model = h("input", { type: "text", name: "model", value: params.get("model") ?? "" });
    const surface = h(
      "select",
      { name: "surface" },
      SURFACES.map((s) => h("option", { value: s, selected: (params.get("surface") ?? "") === s }, s || "any")),
    );
    const success = h(
      "select",
      { name: "success" },
      STATUSES.map(([v, label]) => h("option", { value: v, selected: (params.get("success") ?? "") === v }, label)),
    );
    const since = h("input", { type: "datetime-local", name: "since", value: toLocal(params.get("since")) });
    const until = h("input", { type: "datetime-local", name: "until", value: toLocal(params.get("until")) });
    const limit = params.get("limit") ?? "20";

    const filters = h(
      "form",
      {
        class: "card filters",
        onsubmit: (event: Event) => {
          event.preventDefault();
          const next: Record<string, string> = {};
          if (model.value.trim()) next["model"] = model.value.trim();
          if (surface.value) next["surface"] = surface.value;
          if (success.value) next["success"] = success.value;
          const s = toIso(since.value);
          const u = toIso(until.value);
          if (s) next["since"] = s;
          if (u) next["until"] = u;
          next["limit"] = limit;
          go(href("results", next));
        },
      },
      h(
        "div",
        { class: "row" },
        field("Filter by model", model),
        field("Surface", surface),
        field("Status", success),
        field("Since", since),
        field("Until", until),
      ),
      h("div", { class: "buttons" }, h("button", { type: "submit" }, "Apply filters")),
    );

    const query: Query = { limit: Number(limit) };
    const get = (k: string) => params.get(k) || undefined;
    if (get("model")) query.model = get("model");
    if (get("surface")) query.surface = get("surface") as Query["surface"];
    if (get("success")) query.success = get("success") === "true";
    if (get("since")) query.since = get("since");
    if (get("until")) query.until = get("until");
    if (get("cursor")) query.cursor = get("cursor");

    const list = h("section", { "aria-label": "Stored runs" });
    replace(main, ...heading("Results", "Stored runs, newest first."), filters, errors.el, list);
    try {
      const page = unwrap(await api.GET("/gateway/results", { params: { query } }));
      const rows = page.items.map((run) => [
        h("a", { href: href(`results/${run.id}`) }, when(run.created_at)),
        run.model_name,
        run.surface ?? "–",
        run.status,
        fmt(run.execution_time, 2),
        run.tokens_used != null ? String(run.tokens_used) : "–",
        run.prompt.length > 60 ? `${run.prompt.slice(0, 60)}…` : run.prompt,
      ]);
      const trail = (params.get("trail") ?? "").split(",").filter(Boolean);
      const base: Record<string, string> = {};
      params.forEach((v, k) => {
        if (k !== "cursor" && k !== "trail") base[k] = v;
      });
      const pager = h("nav", { class: "pager", "aria-label": "Pages" });
      if (params.get("cursor")) {
        const previous = trail.slice(0, -1);
        const back: Record<string, string> = { ...base };
        const last = trail[trail.length - 1];
        if (last && last !== "-") back["cursor"] = last;
        if (previous.length) back["trail"] = previous.join(",");
        pager.appendChild(h("a", { href: href("results", back), rel: "prev" }, "Previous page"));
      }
      if (page.next_cursor) {
        const forward: Record<string, string> = { ...base, cursor: page.next_cursor, trail: [...trail, params.get("cursor") ?? "-"].join(",") };
        pager.appendChild(h("a", { href: href("results", forward), rel: "next" }, "Next page"));
      }
      replace(
        list,
        rows.length ? table(`${rows.length} stored runs`, ["Created", "Model", "Surface", "Status", "Time (s)", "Tokens", "Prompt"], rows) : h("p", {}, "No stored run matches."),
        pager,
      );
    } catch (error) {
      errors.show(error);
    }
  },
};
