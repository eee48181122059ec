// One uPlot chart per metric: the bucket average as a line inside its min–max band, a dashed line
// for each alert rule's threshold on the metric and a shaded band for each alert episode.
// uPlot (MIT) is vendored in /vendor (scripts/vendor-uplot) and loaded as the global `uPlot`.
import { formatValue, h, metricLabel } from "./util.js";

const LINE = "#1a5fb4"; // 6.4:1 on white
const BAND_EDGE = "rgba(26, 95, 180, 0.45)";
const BAND_FILL = "rgba(26, 95, 180, 0.14)";
const THRESHOLD = "#a4161a"; // 7.2:1 on white
const EPISODE_FILL = "rgba(164, 22, 26, 0.12)";
const HEIGHT = 180;

export class MetricChart {
  /** ``onZoom(fromMs, toMs)`` is called when the user drags across the chart, ``onCsv()`` when the
   * CSV button is pressed. */
  constructor(parent, meta, metric, onZoom, onCsv) {
    this.meta = meta;
    this.metric = metric;
    this.onZoom = onZoom;
    this.coveredTo = 0; // end of the loaded history range (ms): live readings before it are not appended
    this.thresholds = []; // [{value, kind: "above" | "below", rule}]
    this.episodes = []; // [{from, to (null: open), severity}] in ms
    const unit = (meta.metrics[metric] || {}).unit || "";
    const label = metricLabel(meta, metric);
    this.summary = h("p", { class: "chart-summary muted" }, "loading…");
    this.marks = h("p", { class: "chart-marks muted", hidden: true });
    this.csvStatus = h("span", { class: "csv-status muted", role: "status" });
    this.plotBox = h("div", { class: "plot" });
    this.el = h("figure", { class: "chart", dataset: { metric, points: "0", thresholds: "", episodes: "0" } },
      h("figcaption", {}, h("h3", {}, label, unit && unit !== "fraction" ? ` (${unit})` : ""),
        h("button", { type: "button", class: "secondary csv", "aria-label": `Download ${label} as CSV`,
          onclick: () => onCsv(this) }, "CSV"), this.csvStatus),
      this.plotBox, this.summary, this.marks);
    parent.append(this.el);
    this.data = [[], [], [], []]; // seconds, avg, min, max
    const value = (u, v) => (v === null || v === undefined ? "–" : formatValue(meta, metric, v));
    this.plot = new uPlot({
      width: this.width(), height: HEIGHT,
      scales: { x: { time: true }, y: { range: (u, min, max) => this.yRange(min, max) } },
      legend: { live: true },
      cursor: { drag: { x: true, y: false, setScale: false } },
      series: [
        {},
        { label: "average", stroke: LINE, width: 2, value },
        { label: "min", stroke: BAND_EDGE, width: 1, value },
        { label: "max", stroke: BAND_EDGE, width: 1, value },
      ],
      bands: [{ series: [3, 2], fill: BAND_FILL }],
      axes: [{ stroke: "#333" }, { stroke: "#333", size: 56 }],
      hooks: {
        setSelect: [(u) => this.selected(u)],
        drawClear: [(u) => this.drawEpisodes(u)], // under the series
        draw: [(u) => this.drawThresholds(u)], // over them
      },
    }, this.data, this.plotBox);
    this.plotBox.querySelector("canvas")?.setAttribute("aria-hidden", "true");
  }

  /** The y range: the data's and every threshold's, so a rule's line is always in sight. */
  yRange(min, max) {
    const values = this.thresholds.map((t) => t.value);
    if (min !== null && min !== undefined && Number.isFinite(min)) values.push(min);
    if (max !== null && max !== undefined && Number.isFinite(max)) values.push(max);
    if (!values.length) return [0, 1];
    return uPlot.rangeNum(Math.min(...values), Math.max(...values), 0.1, true);
  }

  /** The alert rules' thresholds on this metric and the alert episodes to draw; redrawn at once. */
  setMarks(thresholds, episodes) {
    const key = JSON.stringify([thresholds, episodes]);
    if (key === this.marksKey) return;
    this.marksKey = key;
    this.thresholds = thresholds;
    this.episodes = episodes;
    this.el.dataset.thresholds = thresholds.map((t) => t.value).join(",");
    this.el.dataset.episodes = String(episodes.length);
    const fmt = (v) => formatValue(this.meta, this.metric, v);
    const parts = thresholds.map((t) => `${t.kind} ${fmt(t.value)} (${t.rule})`);
    if (episodes.length) parts.push(`${episodes.length} alert ${episodes.length === 1 ? "episode" : "episodes"} shaded`);
    this.marks.hidden = !parts.length;
    this.marks.textContent = thresholds.length ? `Alert rules: ${parts.join("; ")}.` : `${parts.join("; ")}.`;
    if (this.loaded) this.redraw();
  }

  drawThresholds(u) {
    const { ctx, bbox } = u;
    ctx.save();
    ctx.strokeStyle = THRESHOLD;
    ctx.lineWidth = Math.max(1, devicePixelRatio);
    ctx.setLineDash([6 * devicePixelRatio, 4 * devicePixelRatio]);
    let drawn = 0;
    for (const t of this.thresholds) {
      const y = Math.round(u.valToPos(t.value, "y", true));
      if (!(y >= bbox.top && y <= bbox.top + bbox.height)) continue; // also NaN: no scale yet
      ctx.beginPath();
      ctx.moveTo(bbox.left, y);
      ctx.lineTo(bbox.left + bbox.width, y);
      ctx.stroke();
      drawn += 1;
    }
    ctx.restore();
    this.el.dataset.drawnThresholds = String(drawn);
  }

  drawEpisodes(u) {
    const { ctx, bbox } = u;
    const now = Date.now();
    let drawn = 0;
    ctx.save();
    ctx.fillStyle = EPISODE_FILL;
    for (const e of this.episodes) {
      const left = Math.max(bbox.left, u.valToPos(e.from / 1000, "x", true));
      const right = Math.min(bbox.left + bbox.width, u.valToPos((e.to || now) / 1000, "x", true));
      if (!(right > left)) continue; // also NaN: no scale yet
      ctx.fillRect(left, bbox.top, Math.max(1, right - left), bbox.height);
      drawn += 1;
    }
    ctx.restore();
    this.el.dataset.drawnEpisodes = String(drawn);
  }

  width() {
    return Math.max(260, Math.floor(this.el.clientWidth || this.el.parentElement.clientWidth || 600) - 4);
  }

  selected(u) {
    const { left, width } = u.select;
    if (width < 4) return;
    const from = Math.round(u.posToVal(left, "x") * 1000);
    const to = Math.round(u.posToVal(left + width, "x") * 1000);
    u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
    if (to - from >= 1000) this.onZoom(from, to);
  }

  /** Buckets from GET /v1/history: [t, min, avg, max, count]; the x scale spans [fromMs, toMs]. */
  setHistory(points, fromMs, toMs, source) {
    this.data = [points.map((p) => p[0] / 1000), points.map((p) => p[2]), points.map((p) => p[1]),
      points.map((p) => p[3])];
    this.range = [fromMs, toMs];
    this.coveredTo = toMs; // readings before this are in the buckets already (the last bucket starts earlier)
    this.source = source;
    this.loaded = true;
    this.redraw();
  }

  /** A live reading: appended (with the window slid to end at ``nowMs``) if newer than the loaded
   * history's range and the last point. */
  append(tMs, value, nowMs) {
    const xs = this.data[0];
    const t = tMs / 1000;
    if (tMs < this.coveredTo || (xs.length && t <= xs[xs.length - 1])) return;
    const span = this.range[1] - this.range[0];
    this.range = [nowMs - span, nowMs];
    for (const series of this.data.slice(1)) series.push(value);
    xs.push(t);
    const cut = xs.findIndex((x) => x >= this.range[0] / 1000);
    if (cut > 0) this.data = this.data.map((s) => s.slice(cut));
    this.redraw();
  }

  redraw() {
    const [from, to] = this.range;
    this.plot.batch(() => {
      this.plot.setData(this.data, false);
      this.plot.setScale("x", { min: from / 1000, max: to / 1000 });
    });
    const n = this.data[0].length;
    this.el.dataset.points = String(n);
    this.el.dataset.span = String(Math.round(to - from)); // the range shown, in ms
    if (!n) {
      this.summary.textContent = "No readings in this range.";
      return;
    }
    const finite = (s) => s.filter((v) => v !== null && Number.isFinite(v));
    const mins = finite(this.data[2]);
    const maxs = finite(this.data[3]);
    const avgs = finite(this.data[1]);
    const fmt = (v) => formatValue(this.meta, this.metric, v);
    const mean = avgs.reduce((a, b) => a + b, 0) / (avgs.length || 1);
    this.summary.textContent = `${n} points${this.source ? ` (${this.source})` : ""}: `
      + `min ${fmt(Math.min(...mins))}, mean of averages ${fmt(mean)}, max ${fmt(Math.max(...maxs))}.`;
  }

  resize() {
    this.plot.setSize({ width: this.width(), height: HEIGHT });
  }

  destroy() {
    this.plot.destroy();
    this.el.remove();
  }
}
