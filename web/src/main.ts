import "./style.css";
import { ApiFailure } from "./api/client";
import { h, replace } from "./dom";
import { benchmarksPage } from "./pages/benchmarks";
import { backendsPage } from "./pages/backends";
import { chatPage } from "./pages/chat";
import { comparePage } from "./pages/compare";
import { jobsPage } from "./pages/jobs";
import { keysPage } from "./pages/keys";
import { resultsPage } from "./pages/results";
import { signInPage } from "./pages/signin";
import { usagePage } from "./pages/usage";
import { BASE, go, href, location_, type Page } from "./router";
import { identify, isAdmin, signOut, who } from "./session";
import { heading, needsAdmin } from "./ui";

const PAGES: Page[] = [chatPage, comparePage, benchmarksPage, resultsPage, jobsPage, usagePage, backendsPage, keysPage];

const main = document.getElementById("main") as HTMLElement;
const nav = document.getElementById("nav") as HTMLElement;
const whoEl = document.getElementById("who") as HTMLElement;
let cleanup: (() => void) | void = undefined;
let known = false;

function renderNav(current: string): void {
  const me = who();
  const links = me
    ? PAGES.filter((p) => p.nav !== false && (!p.admin || isAdmin())).map((p) =>
        h("a", { href: href(p.path), "aria-current": p.path === current ? "page" : null }, p.title),
      )
    : [];
  replace(nav, h("ul", {}, links.map((a) => h("li", {}, a))));
  if (!me) {
    replace(whoEl);
    return;
  }
  replace(
    whoEl,
    `${me.name} (${me.scope}${me.team ? `, team ${me.team}` : ""})`,
    me.anonymous
      ? null
      : h(
          "button",
          {
            type: "button",
            class: "link",
            onclick: () => {
              signOut();
              go(href("signin"));
            },
          },
          "Sign out",
        ),
  );
}

async function render(): Promise<void> {
  if (typeof cleanup === "function") cleanup();
  cleanup = undefined;
  const { parts, params } = location_();
  if (!known || !who()) {
    try {
      await identify();
      known = true;
    } catch (error) {
      replace(main, ...heading("Gateway unreachable"), h("p", { role: "alert" }, String((error as Error).message)));
      return;
    }
  }
  const [first = "", ...rest] = parts;
  if (!who()) {
    renderNav("signin");
    if (first !== "signin") {
      const next = window.location.pathname + window.location.search;
      go(href("signin", next.startsWith(`${BASE}/`) && first ? { next } : undefined), true);
      return;
    }
    cleanup = await signInPage.render(main, params, rest);
    return;
  }
  if (first === "" || first === "signin") {
    go(params.get("next")?.startsWith(`${BASE}/`) ? (params.get("next") as string) : href("chat"), true);
    return;
  }
  const page = PAGES.find((p) => p.path === first);
  renderNav(page?.path ?? "");
  if (!page) {
    replace(main, ...heading("Not found"), h("p", {}, "No such page."));
    return;
  }
  if (page.admin && !isAdmin()) {
    needsAdmin(main, page.title);
    return;
  }
  try {
    cleanup = await page.render(main, params, rest);
  } catch (error) {
    const text = error instanceof ApiFailure || error instanceof Error ? error.message : String(error);
    replace(main, ...heading(page.title), h("p", { class: "error", role: "alert" }, text));
  }
}

document.addEventListener("click", (event) => {
  const target = event.target as Element | null;
  const link = target?.closest("a");
  if (!link || event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
  const url = new URL(link.href, window.location.href);
  if (url.origin !== window.location.origin || !url.pathname.startsWith(`${BASE}/`)) return;
  event.preventDefault();
  go(url.pathname + url.search);
});
window.addEventListener("popstate", () => void render());
window.addEventListener("console:navigate", () => {
  void render();
  main.focus({ preventScroll: true });
});
void render();
