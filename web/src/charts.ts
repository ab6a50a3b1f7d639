// Charts (uPlot), each inside an element with role="img" and an aria-label saying what it
// shows; a data table next to each chart gives the same numbers to screen readers.
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { h } from "./dom";

const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#db2777"];

export interface Chart {
  el: HTMLElement;
  destroy(): void;
}

function figure(label: string): HTMLElement {
  return h("div", { class: "chart", role: "img", "aria-label": label });
}

function width(): number {
  const main = document.getElementById("main");
  return Math.max(320, Math.min(760, (main?.clientWidth ?? 800) - 40));
}

/** Grouped bars: one group per category (x), one bar per series. */
export function barChart(
  label: string,
  categories: string[],
  series: { name: string; values: (number | null)[] }[],
  height = 240,
): Chart {
  const el = figure(label);
  const xs = categories.map((_, i) => i);
  const count = Math.max(series.length, 1);
  const bars = uPlot.paths.bars ? uPlot.paths.bars({ size: [0.7 / count, 60] }) : undefined;
  const plot = new uPlot(
    {
      width: width(),
      height,
      scales: { x: { time: false, range: [-0.5, categories.length - 0.5] } },
      axes: [
        {
          values: (_u, ticks) => ticks.map((t) => (Number.isInteger(t) ? (categories[t] ?? "") : "")),
          incrs: [1],
        },
        {},
      ],
      series: [
        {},
        ...series.map((s, i) => ({
          label: s.name,
          stroke: COLORS[i % COLORS.length],
          fill: COLORS[i % COLORS.length] + "cc",
          paths: bars,
          points: { show: false },
        })),
      ],
    },
    [xs, ...series.map((s) => s.values)] as uPlot.AlignedData,
    el,
  );
  return { el, destroy: () => plot.destroy() };
}

/** Lines over an index (prompt 1, 2, ...): one series per model. */
export function lineChart(
  label: string,
  xLabel: string,
  yLabel: string,
  xs: number[],
  series: { name: string; values: (number | null)[] }[],
  height = 240,
): Chart {
  const el = figure(label);
  const plot = new uPlot(
    {
      width: width(),
      height,
      scales: { x: { time: false } },
      axes: [{ label: xLabel, incrs: [1, 2, 5, 10] }, { label: yLabel }],
      series: [
        { label: xLabel },
        ...series.map((s, i) => ({
          label: s.name,
          stroke: COLORS[i % COLORS.length],
          width: 2,
          points: { show: true, size: 6 },
          spanGaps: true,
        })),
      ],
    },
    [xs, ...series.map((s) => s.values)] as uPlot.AlignedData,
    el,
  );
  return { el, destroy: () => plot.destroy() };
}

/** Time series (seconds since the epoch on x), fed new samples as they come. */
export function updatableTimeChart(
  label: string,
  names: string[],
): { el: HTMLElement; update(xs: number[], ys: (number | null)[][]): void; destroy(): void } {
  const el = figure(label);
  const plot = new uPlot(
    {
      width: width(),
      height: 220,
      scales: {
        x: { range: (_u, _min, max) => [max - 300, max] },
        y: { range: (_u, _min, max) => [0, Math.max(4, Math.ceil(max * 1.2))] },
      },
      series: [{}, ...names.map((name, i) => ({ label: name, stroke: COLORS[i % COLORS.length], width: 2 }))],
      axes: [{}, { label: "requests" }],
    },
    [[], ...names.map(() => [])] as unknown as uPlot.AlignedData,
    el,
  );
  return {
    el,
    update(xs, ys) {
      plot.setData([xs, ...ys] as uPlot.AlignedData);
    },
    destroy: () => plot.destroy(),
  };
}
