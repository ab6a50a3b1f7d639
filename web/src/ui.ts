// Pieces every page uses: headings, error boxes with the problem's detail, status lines.
import { ApiFailure } from "./api/client";
import { h, replace } from "./dom";

export function heading(title: string, intro?: string): HTMLElement[] {
  document.title = `${title} · ollama-gateway`;
  const nodes: HTMLElement[] = [h("h1", {}, title)];
  if (intro) nodes.push(h("p", { class: "intro" }, intro));
  return nodes;
}

/** A live region for errors: shows an API problem's title and `detail`. */
export function errorBox(): { el: HTMLElement; show(error: unknown): void; clear(): void } {
  const el = h("div", { class: "error", role: "alert", hidden: true });
  return {
    el,
    show(error: unknown) {
      const text = error instanceof ApiFailure || error instanceof Error ? error.message : String(error);
      replace(el, text);
      el.hidden = false;
    },
    clear() {
      replace(el);
      el.hidden = true;
    },
  };
}

export function status(): { el: HTMLElement; set(text: string): void } {
  const el = h("p", { class: "status", role: "status", "aria-live": "polite" });
  return { el, set: (text: string) => void (el.textContent = text) };
}

/** A table from rows of cells (strings or nodes), with a caption for its name. */
export function table(caption: string, headers: string[], rows: (string | Node)[][]): HTMLTableElement {
  return h(
    "table",
    {},
    h("caption", {}, caption),
    h("thead", {}, h("tr", {}, headers.map((name) => h("th", { scope: "col" }, name)))),
    h(
      "tbody",
      {},
      rows.map((cells) => h("tr", {}, cells.map((cell) => h("td", {}, cell)))),
    ),
  );
}

export function needsAdmin(main: HTMLElement, title: string): void {
  replace(
    main,
    ...heading(title),
    h("p", { class: "notice", role: "alert" }, "This page needs an admin key. Sign in with one to use it."),
  );
}

/** setInterval that stops when the page is left (the returned function is the page's cleanup). */
export function every(ms: number, task: () => Promise<void> | void): () => void {
  let stopped = false;
  let timer = 0;
  const tick = async () => {
    if (stopped) return;
    try {
      await task();
    } finally {
      if (!stopped) timer = window.setTimeout(tick, ms);
    }
  };
  void tick();
  return () => {
    stopped = true;
    window.clearTimeout(timer);
  };
}
