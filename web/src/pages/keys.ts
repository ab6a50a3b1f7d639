// Keys and audit (admin): create a key (shown once), list and revoke keys; the audit log
// with filters.
import { api, unwrap, type Paths, type Schemas } from "../api/client";
import { field, h, replace, when } from "../dom";
import type { Page } from "../router";
import { errorBox, heading, status, table } from "../ui";

type AuditQuery = NonNullable<Paths["/gateway/audit"]["get"]["parameters"]["query"]>;

export const keysPage: Page = {
  path: "keys",
  title: "Keys",
  admin: true,
  async render(main) {
    const errors = errorBox();
    const note = status();
    const created = h("div", { class: "created", "aria-live": "polite" });
    const list = h("section", { "aria-label": "Keys list" });
    const audit = h("section", { "aria-label": "Audit entries" });

    const refresh = async () => {
      const keys = unwrap(await api.GET("/gateway/keys", { params: { query: { include_revoked: true } } }));
      replace(
        list,
        table(
          `${keys.length} keys`,
          ["Name", "Scope", "Prefix", "Models", "Created", "Revoked", ""],
          keys.map((k: Schemas["KeyOut"]) => [
            k.name,
            k.scope,
            k.prefix,
            (k.models ?? ["all"]).join(", "),
            when(k.created_at),
            k.revoked_at ? when(k.revoked_at) : "–",
            k.revoked_at
              ? ""
              : h(
                  "button",
                  {
                    type: "button",
                    "aria-label": `Revoke key ${k.name}`,
                    onclick: async () => {
                      try {
                        unwrap(await api.DELETE("/gateway/keys/{key}", { params: { path: { key: k.id } } }));
                        note.set(`Key ${k.name} revoked.`);
                        await refresh();
                      } catch (error) {
                        errors.show(error);
                      }
                    },
                  },
                  "Revoke",
                ),
          ]),
        ),
      );
    };

    const name = h("input", { type: "text", required: true, spellcheck: "false" });
    const scope = h("select", {}, h("option", { value: "user" }, "user"), h("option", { value: "admin" }, "admin"));
    const allow = h("input", { type: "text", placeholder: "llama3*, qwen2.5:*", spellcheck: "false" });
    const createForm = h(
      "form",
      {
        class: "card",
        "aria-label": "Create a key",
        onsubmit: async (event: Event) => {
          event.preventDefault();
          errors.clear();
          const models = allow.value.split(",").map((m) => m.trim()).filter(Boolean);
          try {
            const made = unwrap(
              await api.POST("/gateway/keys", {
                body: { name: name.value.trim(), scope: scope.value as "user" | "admin", models: models.length ? models : null },
              }),
            );
            replace(
              created,
              h("p", {}, `Key ${made.name} created. Copy it now: it is not shown again.`),
              h("output", { class: "secret", "aria-label": "The new key" }, made.key),
            );
            name.value = "";
            allow.value = "";
            await refresh();
          } catch (error) {
            errors.show(error);
          }
        },
      },
      h("h2", {}, "Create a key"),
      h("div", { class: "row" }, field("Name", name), field("Scope", scope), field("Models allowed (comma-separated globs)", allow)),
      h("button", { type: "submit" }, "Create key"),
      created,
    );

    const actor = h("input", { type: "text", spellcheck: "false" });
    const outcome = h("select", {}, ["", "allowed", "denied", "failed"].map((o) => h("option", { value: o }, o || "any")));
    const surface = h("select", {}, ["", "gateway", "ollama", "openai"].map((o) => h("option", { value: o }, o || "any")));
    const loadAudit = async () => {
      const query: AuditQuery = { limit: 50 };
      if (actor.value.trim()) query.actor = actor.value.trim();
      if (outcome.value) query.outcome = outcome.value as "allowed" | "denied" | "failed";
      if (surface.value) query.surface = surface.value as "gateway" | "ollama" | "openai";
      const page = unwrap(await api.GET("/gateway/audit", { params: { query } }));
      replace(
        audit,
        table(
          `${page.items.length} audit entries, newest first`,
          ["When", "Actor", "Action", "Target", "Outcome", "Status"],
          page.items.map((e) => [when(e.created_at), e.actor, e.action, e.target ?? "–", e.outcome, e.status != null ? String(e.status) : "–"]),
        ),
      );
    };
    const auditForm = h(
      "form",
      {
        class: "card filters",
        "aria-label": "Audit filters",
        onsubmit: async (event: Event) => {
          event.preventDefault();
          errors.clear();
          try {
            await loadAudit();
          } catch (error) {
            errors.show(error);
          }
        },
      },
      h("div", { class: "row" }, field("Actor", actor), field("Outcome", outcome), field("Audit surface", surface)),
      h("button", { type: "submit" }, "Filter audit log"),
    );

    replace(main, ...heading("Keys", "API keys and the audit log."), note.el, errors.el, createForm, list, h("h2", {}, "Audit log"), auditForm, audit);
    await refresh();
    await loadAudit();
  },
};
