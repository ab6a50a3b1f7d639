// The gateway's API, typed from openapi/openapi.json (openapi-typescript → schema.d.ts) and
// called with openapi-fetch. The key goes in the Authorization header only, never a URL.
import createClient, { type Middleware } from "openapi-fetch";
import type { components, paths } from "./schema";

export type Schemas = components["schemas"];
export type Paths = paths;
export type Problem = Schemas["Problem"];

const KEY_STORAGE = "ollama-gateway.key";

export const auth = {
  get key(): string | null {
    return sessionStorage.getItem(KEY_STORAGE);
  },
  set(key: string): void {
    sessionStorage.setItem(KEY_STORAGE, key);
  },
  clear(): void {
    sessionStorage.removeItem(KEY_STORAGE);
  },
  headers(): Record<string, string> {
    const key = sessionStorage.getItem(KEY_STORAGE);
    return key ? { Authorization: `Bearer ${key}` } : {};
  },
};

const withKey: Middleware = {
  onRequest({ request }) {
    const key = auth.key;
    if (key && !request.headers.has("Authorization")) request.headers.set("Authorization", `Bearer ${key}`);
    return request;
  },
};

export const api = createClient<paths>({ baseUrl: location.origin });
api.use(withKey);

/** An API error, carrying the problem's `detail` (RFC 9457) for the page to show. */
export class ApiFailure extends Error {
  constructor(
    readonly status: number,
    readonly problem: Partial<Problem>,
  ) {
    super(problemText(status, problem));
  }
}

export function problemText(status: number, problem: Partial<Problem> | undefined): string {
  const title = problem?.title ?? `HTTP ${status}`;
  const detail = problem?.detail;
  const fields = (problem?.errors ?? []).map((e) => `${(e.loc ?? []).join(".")}: ${e.msg}`);
  return [detail ? `${title}: ${detail}` : title, ...fields].join("\n");
}

/** The data of an openapi-fetch answer, or an ApiFailure with the problem details. */
export function unwrap<T>(answer: { data?: T; error?: unknown; response: Response }): T {
  if (answer.error !== undefined || !answer.response.ok) {
    throw new ApiFailure(answer.response.status, (answer.error ?? {}) as Partial<Problem>);
  }
  return answer.data as T;
}

/** A raw fetch with the key (for the SSE streams, read as they arrive). */
export async function rawFetch(path: string, init: RequestInit = {}): Promise<Response> {
  const headers = new Headers(init.headers);
  for (const [name, value] of Object.entries(auth.headers())) headers.set(name, value);
  const response = await fetch(path, { ...init, headers });
  if (!response.ok) {
    let problem: Partial<Problem> = {};
    try {
      problem = (await response.json()) as Partial<Problem>;
    } catch {
      /* not JSON */
    }
    throw new ApiFailure(response.status, problem);
  }
  return response;
}
