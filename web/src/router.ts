// Pages at /ui/<page> (history API; the gateway answers index.html for each).
export const BASE = "/ui";

export interface Page {
  path: string;
  title: string;
  admin?: boolean;
  nav?: boolean;
  render(main: HTMLElement, params: URLSearchParams, rest: string[]): void | (() => void) | Promise<void | (() => void)>;
}

export function href(path: string, params?: Record<string, string>): string {
  const query = params ? new URLSearchParams(params).toString() : "";
  return `${BASE}/${path}${query ? `?${query}` : ""}`;
}

export function go(url: string, replace = false): void {
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  window.dispatchEvent(new Event("console:navigate"));
}

/** Where the console is now: the page's path parts after /ui/ and its query. */
export function location_(): { parts: string[]; params: URLSearchParams } {
  const path = window.location.pathname.startsWith(BASE) ? window.location.pathname.slice(BASE.length) : "/";
  return {
    parts: path.split("/").filter(Boolean).map(decodeURIComponent),
    params: new URLSearchParams(window.location.search),
  };
}
