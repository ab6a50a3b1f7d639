// The models the gateway offers (GET /gateway/models), for the pickers.
import { api, unwrap } from "./api/client";
import { h } from "./dom";

export async function modelNames(): Promise<string[]> {
  const models = unwrap(await api.GET("/gateway/models"));
  return models.map((m) => m.name).sort();
}

export function modelSelect(names: string[], selected?: string): HTMLSelectElement {
  return h(
    "select",
    { name: "model" },
    names.map((name) => h("option", { value: name, selected: name === selected }, name)),
  );
}
