// Keys and audit (admin): create a key (shown once) with its team and quotas, list keys
// with theirs and revoke them; the audit log with filters.
import { api, unwrap, type Paths, type Schemas } from "../api/client";
import { field, h, replace, when } from "../dom";
import type { Page } from "../router";
import { errorBox, heading, status, table } from "../ui";

type AuditQuery = NonNullable<Paths["/gateway/audit"]["get"]["parameters"]["query"]>;
type Quotas = Schemas["QuotasIn"];

export const QUOTA_FIELDS = [
  ["tokens_per_day", "Tokens per day", "1"],
  ["tokens_per_month", "Tokens per month", "1"],
  ["requests_per_day", "Requests per day", "1"],
  ["backend_seconds_per_day", "Backend seconds per day", "any"],
] as const;

/** One number field per quota (empty: not set), filled from `initial`. */
function quotaInputs(initial?: Schemas["KeyOut"]["quotas"]): { name: keyof Quotas; label: string; input: HTMLInputElement }[] {
  return QUOTA_FIELDS.map(([name, label, step]) => ({
    name,
    label,
    input: h("input", {
      type: "number",
      min: 0,
      step,
      inputmode: step === "1" ? "numeric" : "decimal",
      value: initial?.[name] != null ? String(initial[name]) : null,
    }),
  }));
}

/** The quotas typed in (null when none is). */
function quotasOf(inputs: ReturnType<typeof quotaInputs>): Quotas | null {
  const quotas: Quotas = {};
  for (const { name, input } of inputs) if (input.value.trim() !== "") quotas[name] = Number(input.value);
  return Object.keys(quotas).length ? quotas : null;
}

function quotaFieldset(inputs: ReturnType<typeof quotaInputs>): HTMLElement {
  return h(
    "fieldset",
    { class: "quota-fields" },
    h("legend", {}, "Quotas (empty: none)"),
    h("div", { class: "row" }, inputs.map(({ label, input }) => field(label, input))),
  );
}

/** A key's or a team's quotas in a few words ("none" when no quota is set). */
export function quotaText(quotas: Schemas["KeyOut"]["quotas"]): string {
  const set = QUOTA_FIELDS.filter(([name]) => quotas?.[name] != null).map(
    ([name, label]) => `${label.toLowerCase()}: ${Number(quotas?.[name]).toLocaleString("en-US")}`,
  );
  return set.length ? set.join("; ") : "none";
}

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

    const changeBox = h("section", { "aria-label": "Change a key" });
    /** A form for the team and quotas of key `k` (PATCH /gateway/keys/{key}: both replaced). */
    const openChange = (k: Schemas["KeyOut"]) => {
      const newTeam = h("input", { type: "text", spellcheck: "false", list: "team-names", autocomplete: "off", value: k.team ?? null });
      const newLimits = quotaInputs(k.quotas);
      const form = h(
        "form",
        {
          class: "card",
          "aria-label": `Team and quotas of key ${k.name}`,
          onsubmit: async (event: Event) => {
            event.preventDefault();
            errors.clear();
            try {
              const body = { team: newTeam.value.trim() || null, quotas: quotasOf(newLimits) };
              unwrap(await api.PATCH("/gateway/keys/{key}", { params: { path: { key: k.id } }, body }));
              replace(changeBox);
              note.set(`Key ${k.name} changed.`);
              await refresh();
            } catch (error) {
              errors.show(error);
            }
          },
        },
        h("h2", {}, `Team and quotas of key ${k.name}`),
        h("div", { class: "row" }, field("Team", newTeam, "Empty: no team.")),
        quotaFieldset(newLimits),
        h(
          "div",
          { class: "buttons" },
          h("button", { type: "submit" }, "Save"),
          h("button", { type: "button", class: "secondary", onclick: () => replace(changeBox) }, "Cancel"),
        ),
      );
      replace(changeBox, form);
      newTeam.focus();
    };

    const refresh = async () => {
      const keys = unwrap(await api.GET("/gateway/keys", { params: { query: { include_revoked: true } } }));
      replace(
        list,
        table(
          `${keys.length} keys`,
          ["Name", "Scope", "Prefix", "Team", "Models", "Quotas", "Created", "Revoked", "Change", "Revoke"],
          keys.map((k: Schemas["KeyOut"]) => [
            k.name,
            k.scope,
            k.prefix,
            k.team ?? "–",
            (k.models ?? ["all"]).join(", "),
            quotaText(k.quotas),
            when(k.created_at),
            k.revoked_at ? when(k.revoked_at) : "–",
            k.revoked_at
              ? ""
              : h(
                  "button",
                  { type: "button", class: "secondary", "aria-label": `Change team and quotas of key ${k.name}`, onclick: () => openChange(k) },
                  "Change",
                ),
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
    const teams = h("datalist", { id: "team-names" });
    const team = h("input", { type: "text", spellcheck: "false", list: "team-names", autocomplete: "off" });
    const limits = quotaInputs();
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
            const body = {
              name: name.value.trim(),
              scope: scope.value as "user" | "admin",
              models: models.length ? models : null,
              team: team.value.trim() || null,
              quotas: quotasOf(limits),
            };
            const made = unwrap(await api.POST("/gateway/keys", { body }));
            replace(
              created,
              h("p", {}, `Key ${made.name} created. Copy it now: it is not shown again.`),
              h("output", { class: "secret", "aria-label": "The new key" }, made.key),
            );
            name.value = "";
            allow.value = "";
            team.value = "";
            for (const { input } of limits) input.value = "";
            await refresh();
          } catch (error) {
            errors.show(error);
          }
        },
      },
      h("h2", {}, "Create a key"),
      h(
        "div",
        { class: "row" },
        field("Name", name),
        field("Scope", scope),
        field("Models allowed (comma-separated globs)", allow),
        field("Team", team, "Optional; its quotas and models apply too."),
        teams,
      ),
      quotaFieldset(limits),
      h("button", { type: "submit" }, "Create key"),
      created,
    );

    const actor = h("input", { type: "text", spellcheck: "false" });
    const outcome = h("select", {}, ["", "allowed", "denied", "failed"].map((o) => h("option", { value: o }, o || "any")));
    const surface = h("select", {}, ["", "gateway", "ollama", "openai", "anthropic", "responses"].map((o) => h("option", { value: o }, o || "any")));
    const loadAudit = async () => {
      const query: AuditQuery = { limit: 50 };
      if (actor.value.trim()) query.actor = actor.value.trim();
      if (outcome.value) query.outcome = outcome.value as "allowed" | "denied" | "failed";
      if (surface.value) query.surface = surface.value as "gateway" | "ollama" | "openai" | "anthropic" | "responses";
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

    replace(main, ...heading("Keys", "API keys and the audit log."), note.el, errors.el, createForm, list, changeBox, h("h2", {}, "Audit log"), auditForm, audit);
    await refresh();
    await loadAudit();
    // Team names to pick from (the field takes any name: the API says when a team is unknown).
    try {
      const known = unwrap(await api.GET("/gateway/teams"));
      replace(teams, known.map((t) => h("option", { value: t.name })));
    } catch {
      /* no teams to offer */
    }
  },
};
