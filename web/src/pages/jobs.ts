// Jobs: batches, benchmarks, comparisons and pulls with live progress (the list is asked
// again every 1.5 s), and Cancel for the ones still queued or running.
import { api, unwrap, type Schemas } from "../api/client";
import { h, progressBar, replace, when } from "../dom";
import { isAdmin } from "../session";
import { href, type Page } from "../router";
import { errorBox, every, heading } from "../ui";

const KINDS = ["", "batch", "benchmark", "comparison", "pull"] as const;

function produced(job: Schemas["JobOut"]): Node | string {
  if (job.benchmark_id) return h("a", { href: href(`benchmarks/${job.benchmark_id}`) }, "benchmark");
  if (job.batch_id) return `batch ${job.batch_id.slice(0, 8)}`;
  if (job.comparison_id) return `comparison ${job.comparison_id.slice(0, 8)}`;
  return "";
}

export const jobsPage: Page = {
  path: "jobs",
  title: "Jobs",
  async render(main, params) {
    const errors = errorBox();
    const kind = h(
      "select",
      {
        onchange: () => void refresh(),
      },
      KINDS.map((k) => h("option", { value: k, selected: (params.get("kind") ?? "") === k }, k || "any")),
    );
    kind.id = "job-kind";
    const list = h("ul", { class: "joblist", "aria-label": "Jobs", "aria-live": "off" });
    const refresh = async () => {
      try {
        const query: { limit: number; kind?: Schemas["JobOut"]["kind"] } = { limit: 30 };
        if (kind.value) query.kind = kind.value as Schemas["JobOut"]["kind"];
        const page = unwrap(await api.GET("/gateway/jobs", { params: { query } }));
        // A running pull's bytes (admins only may read pulls): its latest progress from Ollama.
        const bytes = new Map<string, { done: number; total: number; status: string }>();
        if (isAdmin()) {
          await Promise.all(
            page.items
              .filter((job) => job.kind === "pull" && job.status === "running")
              .map(async (job) => {
                const pull = await api.GET("/gateway/pulls/{pull_id}", { params: { path: { pull_id: job.id } } });
                const progress = pull.data?.progress ?? {};
                const total = progress["total"];
                const done = progress["completed"];
                if (typeof total === "number" && total > 0) {
                  const status = typeof progress["status"] === "string" ? progress["status"] : "";
                  bytes.set(job.id, { done: typeof done === "number" ? done : 0, total, status });
                }
              }),
          );
        }
        errors.clear();
        replace(
          list,
          page.items.length
            ? page.items.map((job) => {
                const label = `${job.kind} of ${job.subject}`;
                const bar = progressBar(`Progress of ${label}`);
                const pulled = bytes.get(job.id);
                if (pulled) {
                  bar.set(pulled.done, pulled.total, (n) => `${(n / 1e6).toFixed(0)} MB`);
                  bar.el.title = pulled.status;
                } else bar.set(job.completed, job.total);
                const active = job.status === "queued" || job.status === "running";
                return h(
                  "li",
                  { class: `job ${job.status}` },
                  h("span", { class: "job-name" }, label),
                  h("span", { class: "job-status" }, job.cancel_requested && active ? "cancelling" : job.status),
                  bar.el,
                  h("span", { class: "job-when" }, when(job.created_at)),
                  produced(job),
                  job.error ? h("span", { class: "job-error" }, job.error) : null,
                  active
                    ? h(
                        "button",
                        {
                          type: "button",
                          "aria-label": `Cancel ${label}`,
                          onclick: async () => {
                            try {
                              unwrap(await api.POST("/gateway/jobs/{job_id}/cancel", { params: { path: { job_id: job.id } } }));
                              await refresh();
                            } catch (error) {
                              errors.show(error);
                            }
                          },
                        },
                        "Cancel",
                      )
                    : null,
                );
              })
            : h("li", {}, "No jobs."),
        );
      } catch (error) {
        errors.show(error);
      }
    };
    replace(
      main,
      ...heading("Jobs", "Batches, benchmarks, comparisons and pulls run as jobs; this list follows them live."),
      h("div", { class: "field" }, h("label", { for: kind.id }, "Kind"), kind),
      errors.el,
      list,
    );
    return every(1500, refresh);
  },
};
