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

/** A fieldset of model checkboxes, the first `checked` of them ticked. */
export function modelPicker(names: string[], legend: string, checked: number): HTMLFieldSetElement {
  return h(
    "fieldset",
    { class: "models" },
    h("legend", {}, legend),
    names.map((name, i) =>
      h("label", { class: "check" }, h("input", { type: "checkbox", name: "models", value: name, checked: i < checked }), name),
    ),
  );
}

/** The models ticked in a `modelPicker`. */
export function checkedModels(picker: HTMLElement): string[] {
  return [...picker.querySelectorAll<HTMLInputElement>("input:checked")].map((i) => i.value);
}
