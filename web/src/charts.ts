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

/** Bars: one per category (x), e.g. one per model, on the metric's own scale. */
export function barChart(label: string, categories: string[], name: string, values: (number | null)[], color = 0, height = 200): Chart {
  const el = figure(label);
  const xs = categories.map((_, i) => i);
  const bars = uPlot.paths.bars ? uPlot.paths.bars({ size: [0.5, 80] }) : undefined;
  const plot = new uPlot(
    {
      width: Math.min(360, width()),
      height,
      legend: { show: false },
      scales: {
        x: { time: false, range: [-0.5, categories.length - 0.5] },
        y: { range: (_u, _min, max) => [0, max > 0 ? max * 1.15 : 1] },
      },
      axes: [
        {
          values: (_u, ticks) => ticks.map((t) => (Number.isInteger(t) ? (categories[t] ?? "") : "")),
          incrs: [1],
        },
        { label: name, size: 60 },
      ],
      series: [
        {},
        {
          label: name,
          stroke: COLORS[color % COLORS.length],
          fill: COLORS[color % COLORS.length] + "cc",
          paths: bars,
          points: { show: false },
        },
      ],
    },
    [xs, values] as uPlot.AlignedData,
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

/** Stacked bars over time (x: each bucket's start, seconds since the epoch), one colour per
 * series, a bucket's bar the sum of the series. uPlot draws series in order, each over the
 * one before: the first drawn is the running total of every series, the next the total
 * less the last series, and so on, so the part of each bar left showing is its series'. */
export function stackedBarChart(
  label: string,
  yLabel: string,
  xs: number[],
  bucketSeconds: number,
  series: { name: string; values: number[] }[],
  height = 240,
): Chart {
  const el = figure(label);
  const totals: number[][] = [];
  let running = xs.map(() => 0);
  for (const s of series) {
    running = running.map((v, i) => v + (s.values[i] ?? 0));
    totals.push(running);
  }
  const order = series.map((_, i) => series.length - 1 - i);
  const bars = uPlot.paths.bars ? uPlot.paths.bars({ size: [0.7, 60], align: 0 }) : undefined;
  const first = xs.length ? (xs[0] as number) : 0;
  const last = xs.length ? (xs[xs.length - 1] as number) : 0;
  const plot = new uPlot(
    {
      width: width(),
      height,
      legend: { live: false },
      cursor: { show: false },
      // Buckets are UTC hours and days (the ledger's): the axis speaks UTC too.
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
      scales: {
        x: { range: () => [first - bucketSeconds / 2, last + bucketSeconds / 2] },
        y: { range: (_u, _min, max) => [0, max > 0 ? max * 1.1 : 1] },
      },
      axes: [{}, { label: yLabel, size: 70 }],
      series: [
        {},
        ...order.map((i) => ({
          label: series[i]?.name ?? "",
          stroke: COLORS[i % COLORS.length],
          fill: COLORS[i % COLORS.length],
          paths: bars,
          points: { show: false },
        })),
      ],
    },
    // A bucket with nothing in it draws no bar (not a hairline at zero).
    [xs, ...order.map((i) => (totals[i] as number[]).map((v) => (v > 0 ? v : null)))] as uPlot.AlignedData,
    el,
  );
  return { el, destroy: () => plot.destroy() };
}
