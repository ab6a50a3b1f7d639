// Usage: tokens and backend time per team, model, key, backend or surface over the last 1, 7
// or 30 days (GET /gateway/usage), as stacked bar charts, a table per group and a table of
// the ledger's rows, with a CSV download (the same query with Accept: text/csv); and each
// quota of the key signed in (GET /gateway/quotas) as a meter of what is used. A user key
// sees its own usage only: the API answers it nothing else, and the page offers it no
// grouping by team, key or backend.
import { api, rawFetch, unwrap, type Paths, type Schemas } from "../api/client";
import { stackedBarChart, type Chart } from "../charts";
import { field, fmt, h, replace, when } from "../dom";
import { href, type Page } from "../router";
import { isAdmin } from "../session";
import { errorBox, heading, status, table } from "../ui";

type GroupBy = "team" | "key" | "model" | "backend" | "surface";
type Bucket = "hour" | "day";

type UsageRow = Schemas["UsageRow"];
type UsageQuery = NonNullable<Paths["/gateway/usage"]["get"]["parameters"]["query"]>;

interface QuotaBar {
  scope: string;
  quota: string;
  limit: number;
  used: number;
  resets_at?: string | null;
}

const GROUPS: { value: GroupBy; label: string; admin: boolean }[] = [
  { value: "team", label: "Team", admin: true },
  { value: "model", label: "Model", admin: false },
  { value: "key", label: "Key", admin: true },
  { value: "backend", label: "Backend", admin: true },
  { value: "surface", label: "Surface", admin: false },
];
const RANGES = [1, 7, 30] as const;
const QUOTA_NAMES: Record<string, string> = {
  tokens_per_day: "Tokens per day",
  tokens_per_month: "Tokens per month",
  requests_per_day: "Requests per day",
  backend_seconds_per_day: "Backend seconds per day",
};
/** Groups drawn one by one in a chart; the rest are summed as "other". */
const MOST_GROUPS = 7;
const HOUR = 3600;
const DAY = 86400;

/** The window of the last `days` days: hour buckets for one day, day buckets (UTC) for more. */
function window_(days: number, now = new Date()): { from: Date; to: Date; bucket: Bucket; step: number } {
  if (days <= 1) {
    const hour = Math.floor(now.getTime() / 1000 / HOUR) * HOUR;
    return { from: new Date((hour - 23 * HOUR) * 1000), to: now, bucket: "hour", step: HOUR };
  }
  const day = Math.floor(now.getTime() / 1000 / DAY) * DAY;
  return { from: new Date((day - (days - 1) * DAY) * 1000), to: now, bucket: "day", step: DAY };
}

function usageQuery(group: GroupBy, days: number): UsageQuery & Record<string, string> {
  const w = window_(days);
  return { group_by: group, bucket: w.bucket, from: w.from.toISOString(), to: w.to.toISOString() };
}

function groupName(row: UsageRow, group: GroupBy): string {
  const value = row[group];
  if (value === null || value === undefined || value === "") return group === "team" ? "(no team)" : "(none)";
  return String(value);
}

const tokens = (r: UsageRow) => (r.prompt_tokens ?? 0) + (r.output_tokens ?? 0);
const int = (n: number) => Math.round(n).toLocaleString("en-US");
/** Seconds with the digits that matter (GPU time ranges from milliseconds to days). */
const secs = (n: number) => (n === 0 ? "0" : fmt(n, n < 1 ? 3 : n < 100 ? 2 : 1));

function bucketText(iso: string, bucket: Bucket): string {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  return bucket === "day" ? date.toISOString().slice(0, 10) : `${date.toISOString().slice(0, 13).replace("T", " ")}:00 UTC`;
}

/** The groups with the most tokens (then backend time) first, the rest folded into "other". */
function groupsOf(rows: UsageRow[], group: GroupBy): { names: string[]; of: (row: UsageRow) => string } {
  const totals = new Map<string, [number, number]>();
  for (const row of rows) {
    const name = groupName(row, group);
    const [t, s] = totals.get(name) ?? [0, 0];
    totals.set(name, [t + tokens(row), s + (row.backend_seconds ?? 0)]);
  }
  const ranked = [...totals.entries()].sort((a, b) => b[1][0] - a[1][0] || b[1][1] - a[1][1] || a[0].localeCompare(b[0])).map(([n]) => n);
  if (ranked.length <= MOST_GROUPS + 1) return { names: ranked, of: (row) => groupName(row, group) };
  const kept = new Set(ranked.slice(0, MOST_GROUPS));
  return { names: [...kept, "other"], of: (row) => (kept.has(groupName(row, group)) ? groupName(row, group) : "other") };
}

function charts(rows: UsageRow[], group: GroupBy, days: number): { nodes: HTMLElement[]; made: Chart[] } {
  const w = window_(days);
  const start = Math.floor(w.from.getTime() / 1000);
  const end = Math.floor(w.to.getTime() / 1000);
  const xsSet = new Set<number>();
  for (let x = start; x <= end; x += w.step) xsSet.add(x);
  for (const row of rows) {
    const t = Math.floor(new Date(row.bucket).getTime() / 1000);
    if (!Number.isNaN(t)) xsSet.add(t);
  }
  const xs = [...xsSet].sort((a, b) => a - b);
  const at = new Map(xs.map((x, i) => [x, i]));
  const { names, of } = groupsOf(rows, group);
  const series = (value: (r: UsageRow) => number) =>
    names.map((name) => {
      const values = xs.map(() => 0);
      for (const row of rows) {
        if (of(row) !== name) continue;
        const i = at.get(Math.floor(new Date(row.bucket).getTime() / 1000));
        if (i !== undefined) values[i] = (values[i] ?? 0) + value(row);
      }
      return { name, values };
    });
  const span = days === 1 ? "the last 24 hours, per hour" : `the last ${days} days, per day`;
  const who = names.length ? names.join(", ") : "no usage";
  const per = GROUPS.find((g) => g.value === group)?.label.toLowerCase() ?? group;
  const tokenChart = stackedBarChart(
    `Stacked bar chart of tokens (prompt and output) per ${per} over ${span}: ${who}`,
    "tokens",
    xs,
    w.step,
    series(tokens),
  );
  const timeChart = stackedBarChart(
    `Stacked bar chart of backend seconds per ${per} over ${span}: ${who}`,
    "backend seconds",
    xs,
    w.step,
    series((r) => r.backend_seconds ?? 0),
  );
  return {
    nodes: [h("h3", {}, `Tokens per ${per}`), tokenChart.el, h("h3", {}, `Backend time per ${per}`), timeChart.el],
    made: [tokenChart, timeChart],
  };
}

function totalsTable(rows: UsageRow[], group: GroupBy, label: string, cost: string | null): HTMLTableElement {
  const sums = new Map<string, { requests: number; failures: number; tokens: number; seconds: number; cost: number }>();
  for (const row of rows) {
    const name = groupName(row, group);
    const s = sums.get(name) ?? { requests: 0, failures: 0, tokens: 0, seconds: 0, cost: 0 };
    s.requests += row.requests ?? 0;
    s.failures += row.failures ?? 0;
    s.tokens += tokens(row);
    s.seconds += row.backend_seconds ?? 0;
    s.cost += row.cost ?? 0;
    sums.set(name, s);
  }
  const ordered = [...sums.entries()].sort((a, b) => b[1].tokens - a[1].tokens || a[0].localeCompare(b[0]));
  return table(
    `Totals per ${label.toLowerCase()}`,
    [label, "Requests", "Failures", "Tokens", "Backend seconds", ...(cost !== null ? [cost] : [])],
    ordered.map(([name, s]) => [name, int(s.requests), int(s.failures), int(s.tokens), secs(s.seconds), ...(cost !== null ? [fmt(s.cost, 2)] : [])]),
  );
}

function rowsTable(rows: UsageRow[], group: GroupBy, label: string, bucket: Bucket, cost: string | null): HTMLTableElement {
  const ordered = [...rows].sort((a, b) => a.bucket.localeCompare(b.bucket) || groupName(a, group).localeCompare(groupName(b, group)));
  return table(
    `${rows.length} usage rows, per ${bucket} and ${label.toLowerCase()}`,
    [bucket === "day" ? "Day (UTC)" : "Hour", label, "Requests", "Failures", "Prompt tokens", "Output tokens", "Backend seconds", "Load seconds", ...(cost !== null ? [cost] : [])],
    ordered.map((r) => [
      bucketText(r.bucket, bucket),
      groupName(r, group),
      int(r.requests ?? 0),
      int(r.failures ?? 0),
      int(r.prompt_tokens ?? 0),
      int(r.output_tokens ?? 0),
      secs(r.backend_seconds ?? 0),
      secs(r.load_seconds ?? 0),
      ...(cost !== null ? [r.cost != null ? fmt(r.cost, 4) : "–"] : []),
    ]),
  );
}

/** GET /gateway/quotas as one bar per quota set on the key or its team (a quota with no
 * limit is not set, and gets no bar). */
function quotaBars(answer: Schemas["QuotasOut"]): QuotaBar[] {
  const owners = [
    ["key", answer.key],
    ["team", answer.team],
  ] as const;
  return owners.flatMap(([kind, owner]) =>
    (owner?.quotas ?? [])
      .filter((q) => q.limit !== null)
      .map((q) => ({ scope: `${kind} ${owner?.name ?? ""}`.trim(), quota: q.quota, limit: q.limit as number, used: q.used, resets_at: q.resets_at })),
  );
}

function quotaMeter(bar: QuotaBar, id: string): HTMLElement {
  const name = QUOTA_NAMES[bar.quota] ?? bar.quota;
  const seconds = bar.quota.startsWith("backend_seconds");
  const show = (n: number) => (seconds ? secs(n) : int(n));
  const left = Math.max(0, bar.limit - bar.used);
  const label = `${name} (${bar.scope})`;
  return h(
    "div",
    { class: "quota" },
    h("label", { for: id }, label),
    h("meter", { id, min: 0, max: Math.max(bar.limit, 1), value: Math.min(bar.used, bar.limit), low: bar.limit * 0.75, high: bar.limit * 0.9, optimum: 0 }),
    h(
      "span",
      { class: "quota-text" },
      `${show(bar.used)} of ${show(bar.limit)} used (${bar.limit > 0 ? Math.floor((100 * bar.used) / bar.limit) : 100}%), ${show(left)} left`,
      bar.resets_at ? `; the window ends ${when(bar.resets_at)}` : "",
    ),
  );
}

export const usagePage: Page = {
  path: "usage",
  title: "Usage",
  async render(main, params) {
    const admin = isAdmin();
    const errors = errorBox();
    const note = status();
    const offered = GROUPS.filter((g) => admin || !g.admin);
    const asked = params.get("group_by") as GroupBy | null;
    const firstGroup: GroupBy = offered.some((g) => g.value === asked) ? (asked as GroupBy) : admin ? "team" : "model";
    const askedDays = Number(params.get("days"));
    const firstDays = (RANGES as readonly number[]).includes(askedDays) ? askedDays : 7;

    const group = h("select", {}, offered.map((g) => h("option", { value: g.value, selected: g.value === firstGroup }, g.label)));
    const range = h(
      "select",
      {},
      RANGES.map((d) => h("option", { value: String(d), selected: d === firstDays }, d === 1 ? "Last 24 hours" : `Last ${d} days`)),
    );
    const download = h("button", { type: "button", class: "secondary" }, "Download CSV");
    const plots = h("section", { class: "plots", "aria-label": "Usage charts" });
    const tables = h("section", { "aria-label": "Usage tables" });
    const quotas = h("section", { "aria-label": "Quotas" });
    let made: Chart[] = [];

    const chosen = (): { g: GroupBy; days: number; label: string } => {
      const g = group.value as GroupBy;
      return { g, days: Number(range.value), label: GROUPS.find((x) => x.value === g)?.label ?? g };
    };

    let loads = 0;
    const load = async () => {
      const { g, days, label } = chosen();
      const mine = ++loads; // an answer to an earlier choice, arriving late, is dropped
      history.replaceState(null, "", href("usage", { group_by: g, days: String(days) }));
      errors.clear();
      // JSON asked for (the operation also answers text/csv, hence the cast).
      const answer = await api.GET("/gateway/usage", { params: { query: usageQuery(g, days) }, headers: { Accept: "application/json" } });
      const page = unwrap(answer) as Schemas["UsagePage"];
      if (mine !== loads) return;
      const rows = page.rows;
      const withCost = rows.some((r) => r.cost !== undefined && r.cost !== null);
      const costHeader = withCost ? (page.currency ? `Cost (${page.currency})` : "Cost") : null;
      made.forEach((c) => c.destroy());
      const drawn = charts(rows, g, days);
      made = drawn.made;
      replace(plots, h("h2", {}, admin ? `Usage per ${label.toLowerCase()}` : `Your key's usage per ${label.toLowerCase()}`), drawn.nodes);
      replace(
        tables,
        rows.length ? totalsTable(rows, g, label, costHeader) : h("p", {}, "No usage in this time."),
        rows.length ? rowsTable(rows, g, label, window_(days).bucket, costHeader) : null,
      );
      note.set(`${rows.length} rows, ${days === 1 ? "last 24 hours" : `last ${days} days`}, per ${label.toLowerCase()}.`);
    };

    const reload = async () => {
      try {
        await load();
      } catch (error) {
        errors.show(error);
      }
    };
    group.addEventListener("change", () => void reload());
    range.addEventListener("change", () => void reload());

    download.addEventListener("click", async () => {
      const { g, days } = chosen();
      errors.clear();
      try {
        const query = new URLSearchParams(usageQuery(g, days)).toString();
        const response = await rawFetch(`/gateway/usage?${query}`, { headers: { Accept: "text/csv" } });
        const blob = new Blob([await response.text()], { type: "text/csv" });
        const url = URL.createObjectURL(blob);
        const link = h("a", { href: url, download: `usage-per-${g}-${days}d.csv`, hidden: true });
        document.body.appendChild(link);
        link.click();
        link.remove();
        window.setTimeout(() => URL.revokeObjectURL(url), 10_000);
        note.set("CSV downloaded.");
      } catch (error) {
        errors.show(error);
      }
    });

    const loadQuotas = async () => {
      const bars = quotaBars(unwrap(await api.GET("/gateway/quotas")));
      replace(
        quotas,
        h("h2", {}, "Quotas"),
        bars.length
          ? h("div", { class: "quotas" }, bars.map((bar, i) => quotaMeter(bar, `quota-${i}`)))
          : h("p", {}, "No quota is set on this key or its team."),
      );
    };

    replace(
      main,
      ...heading(
        "Usage",
        admin ? "Tokens and backend time used through the gateway, per team, model, key, backend or surface." : "Tokens and backend time your key used, and its quotas.",
      ),
      h(
        "form",
        { class: "card filters", "aria-label": "Usage view", onsubmit: (event: Event) => event.preventDefault() },
        h("div", { class: "row" }, field("Group by", group), field("Time range", range)),
        h("div", { class: "buttons" }, download),
      ),
      note.el,
      errors.el,
      quotas,
      plots,
      tables,
    );
    try {
      await loadQuotas();
    } catch (error) {
      errors.show(error);
    }
    await reload();
    return () => made.forEach((c) => c.destroy());
  },
};
