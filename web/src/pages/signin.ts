import { field, h, replace } from "../dom";
import { BASE, go, href, type Page } from "../router";
import { signIn } from "../session";
import { errorBox, heading } from "../ui";

export const signInPage: Page = {
  path: "signin",
  title: "Sign in",
  nav: false,
  render(main, params) {
    const key = h("input", { type: "password", name: "key", autocomplete: "off", required: true, spellcheck: "false" });
    const errors = errorBox();
    const form = h(
      "form",
      {
        class: "card",
        onsubmit: async (event: Event) => {
          event.preventDefault();
          errors.clear();
          try {
            await signIn(key.value.trim());
            key.value = "";
            const next = params.get("next");
            go(next?.startsWith(`${BASE}/`) ? next : href("chat"), true);
          } catch (error) {
            errors.show(error);
          }
        },
      },
      field("API key", key, "Kept in this tab's session storage only; sent as Authorization: Bearer."),
      h("button", { type: "submit" }, "Sign in"),
      errors.el,
    );
    replace(main, ...heading("Sign in", "This gateway needs an API key (ollama-gateway keys create)."), form);
  },
};
