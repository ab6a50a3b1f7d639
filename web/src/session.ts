// Who is using the console: asked of GET /gateway/whoami, first without a key (a gateway
// serving anonymous loopback clients answers 200: no sign-in), then with the stored key.
import { api, auth, ApiFailure, unwrap, type Schemas } from "./api/client";

export type Who = Schemas["WhoAmI"];

let current: Who | null = null;

export function who(): Who | null {
  return current;
}

export function isAdmin(): boolean {
  return current?.scope === "admin";
}

/** Who the gateway says we are; null when a key is needed (none stored, or refused). */
export async function identify(): Promise<Who | null> {
  try {
    current = unwrap(await api.GET("/gateway/whoami"));
  } catch (error) {
    if (error instanceof ApiFailure && error.status === 401) {
      current = null;
      if (auth.key) auth.clear();
      return null;
    }
    throw error;
  }
  return current;
}

/** Try a key: kept in sessionStorage (this tab only) when the gateway accepts it. */
export async function signIn(key: string): Promise<Who> {
  const answer = await api.GET("/gateway/whoami", { headers: { Authorization: `Bearer ${key}` } });
  current = unwrap(answer);
  auth.set(key);
  return current;
}

export function signOut(): void {
  auth.clear();
  current = null;
}
