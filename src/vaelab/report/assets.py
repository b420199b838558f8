"""The report page's stylesheet and the explorer's script, kept here as text so they install with the package.

Everything is inline in the page: no fonts, scripts or styles are fetched (the page opens offline
and from a mail attachment). The script reads the JSON block `explorer-data` written by
`vaelab.report.explorer.explorer_data` and exposes, for tests and the curious, `window.decodeAt(u, v)`,
`window.setCoordinate(j, value)`, `window.latentPoint` ({coordinates, h}) and `window.explorerDecoder`
({parameters(h), means(parameters)}: the decoder's program and the likelihood's E[x|h], in float64).
"""

STYLE_CSS = """
:root {
  --ink: #1d2430; --muted: #5b6575; --line: #d9dee6; --paper: #ffffff; --wash: #f4f6f9; --accent: #2f6fdb;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  color: var(--ink); background: var(--wash);
}
body { margin: 0; line-height: 1.45; }
header { background: var(--paper); border-bottom: 1px solid var(--line); }
header > div, main { max-width: 1120px; margin: 0 auto; padding: 0 24px; }
header h1 { font-size: 1.5rem; margin: 0; padding-top: 20px; }
header h1 .run { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; color: var(--accent); }
header .summary { margin: 6px 0 2px; font-size: 1.02rem; }
header .meta { margin: 0; color: var(--muted); font-size: 0.85rem; }
nav { display: flex; gap: 18px; padding: 12px 0 14px; font-size: 0.92rem; }
nav a { color: var(--accent); text-decoration: none; }
nav a:hover { text-decoration: underline; }
section { background: var(--paper); border: 1px solid var(--line); border-radius: 8px; margin: 20px 0;
  padding: 4px 22px 18px; }
h2 { font-size: 1.2rem; margin: 16px 0 8px; }
h3 { font-size: 1rem; margin: 18px 0 6px; color: var(--muted); font-weight: 600; }
p.note { color: var(--muted); font-size: 0.9rem; margin: 4px 0 12px; max-width: 820px; }
code, .mono { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 0.88em; }

table.data { border-collapse: collapse; font-size: 0.88rem; font-variant-numeric: tabular-nums; }
table.data th, table.data td { padding: 4px 12px; border-bottom: 1px solid var(--line); text-align: left; }
table.data thead th { background: var(--wash); font-weight: 600; position: sticky; top: 0; }
table.data td.number { text-align: right; }
table.data tbody tr:hover td { background: #f8fafc; }
table.data tbody th.group { background: var(--wash); color: var(--muted); font-weight: 600; text-align: left; }
.scroll { max-height: 420px; overflow: auto; border: 1px solid var(--line); border-radius: 6px; display: inline-block;
  max-width: 100%; }
.scroll table.data { margin: 0; }
.columns { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.columns > * { min-width: 0; }

.explorer { display: flex; flex-wrap: wrap; gap: 28px; align-items: flex-start; }
.explorer figure { margin: 0; }
.explorer figcaption { color: var(--muted); font-size: 0.85rem; margin-top: 6px; }
#plane { width: 400px; height: 400px; max-width: 100%; border: 1px solid var(--line); border-radius: 6px;
  cursor: crosshair; touch-action: none; display: block; }
#plane:focus { outline: 2px solid var(--accent); outline-offset: 2px; }
#decoded { width: 280px; height: auto; image-rendering: pixelated; border-radius: 6px; display: block;
  background: #000; }
#readout { font-size: 0.85rem; max-width: 280px; overflow-wrap: anywhere; white-space: pre-line; }
#legend { display: flex; flex-wrap: wrap; gap: 4px 12px; font-size: 0.82rem; color: var(--muted); margin-top: 8px;
  max-width: 400px; }
#legend span.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 50%; margin-right: 4px; }
#sliders { display: grid; grid-template-columns: repeat(auto-fill, minmax(250px, 1fr)); gap: 4px 22px;
  margin-top: 16px; font-size: 0.85rem; }
#sliders label { display: grid; grid-template-columns: 92px 1fr 52px; align-items: center; gap: 8px; }
#sliders output { text-align: right; font-variant-numeric: tabular-nums; }
#sliders input { width: 100%; }
.buttons { margin-top: 10px; }
button { font: inherit; font-size: 0.85rem; padding: 3px 10px; border: 1px solid var(--line); border-radius: 5px;
  background: var(--wash); cursor: pointer; }
button:hover { border-color: var(--accent); }

.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 22px; }
.figures figure, figure.curves { margin: 0; }
.figures figure { cursor: zoom-in; }
.figures figure.wide { grid-column: 1 / -1; cursor: zoom-out; }
.figures img, figure.curves img { max-width: 100%; height: auto; display: block; border: 1px solid var(--line);
  border-radius: 4px; }
.figures figcaption, figure.curves figcaption { font-size: 0.85rem; color: var(--muted); margin-top: 4px; }
pre.command { background: var(--wash); padding: 8px 12px; border-radius: 6px; overflow-x: auto; font-size: 0.85rem; }
footer { color: var(--muted); font-size: 0.8rem; text-align: center; padding: 6px 0 28px; }
"""

EXPLORER_JS = r"""
// The live latent explorer: the run's own decoder, in JavaScript, decodes the point under the pointer.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("explorer-data").textContent);

  // --- arrays: base64 of little-endian float32 ------------------------------------------------
  function float32s(base64) {
    const text = atob(base64);
    const view = new DataView(new ArrayBuffer(text.length));
    for (let i = 0; i < text.length; i++) view.setUint8(i, text.charCodeAt(i));
    const values = new Float32Array(text.length / 4);
    for (let i = 0; i < values.length; i++) values[i] = view.getFloat32(4 * i, true);
    return values;
  }

  // erf by Numerical Recipes' Chebyshev fit of erfc (relative error < 1.2e-7), for the exact GELU.
  function erf(x) {
    const z = Math.abs(x);
    const t = 1 / (1 + 0.5 * z);
    const tail = t * Math.exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
      t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 +
      t * 0.17087277)))))))));
    return x >= 0 ? 1 - tail : tail - 1;
  }

  // torch's defaults: ELU alpha = 1; Softplus beta = 1, threshold = 20; GELU in its erf form.
  const ACTIVATIONS = {
    relu: (a) => (a > 0 ? a : 0),
    tanh: Math.tanh,
    elu: (a) => (a > 0 ? a : Math.expm1(a)),
    softplus: (a) => (a > 20 ? a : Math.log1p(Math.exp(a))),
    gelu: (a) => 0.5 * a * (1 + erf(a / Math.SQRT2)),
  };
  const sigmoid = (a) => 1 / (1 + Math.exp(-a));

  // --- the decoder: a program of ops on a tensor {data, shape}, as vaelab.report.explorer writes it --
  function compile(op) {
    if (op.op === "residual") return { op: "residual", ops: op.ops.map(compile) };
    if (op.weight === undefined) return op;
    return { ...op, weight: float32s(op.weight), bias: float32s(op.bias) };
  }
  const program = data.decoder.ops.map(compile);

  function linear(op, x) {
    const [rows, columns] = op.shape;
    const out = new Float64Array(rows);
    for (let o = 0; o < rows; o++) {
      let sum = op.bias[o];
      const row = o * columns;
      for (let i = 0; i < columns; i++) sum += op.weight[row + i] * x.data[i];
      out[o] = sum;
    }
    return { data: out, shape: [rows] };
  }

  // a plain NCHW convolution of one image with zero padding, as torch's Conv2d (groups 1, dilation 1):
  // out[o, y, x] = b[o] + sum_{i, dy, dx} w[o, i, dy, dx] in[i, y sy + dy - py, x sx + dx - px]. Each
  // (o, i, dy, dx) adds one weight times a shifted input row to the output rows it reaches, over the columns it
  // reaches: no bounds test per pixel.
  function conv2d(op, x) {
    const [outC, inC, kh, kw] = op.shape;
    const [, h, w] = x.shape;
    const [sy, sx] = op.stride, [py, px] = op.padding, input = x.data, weights = op.weight;
    const oh = Math.floor((h + 2 * py - kh) / sy) + 1, ow = Math.floor((w + 2 * px - kw) / sx) + 1;
    const out = new Float64Array(outC * oh * ow);
    // the output indices [first, last) whose source index (index * stride + offset - pad) lies in [0, size)
    const first = (pad, offset, stride) => Math.max(0, Math.ceil((pad - offset) / stride));
    const last = (pad, offset, stride, size, outSize) => Math.min(outSize, Math.ceil((size + pad - offset) / stride));
    for (let o = 0; o < outC; o++) {
      const base = o * oh * ow;
      out.fill(op.bias[o], base, base + oh * ow);
      for (let i = 0; i < inC; i++) {
        const plane = i * h * w;
        for (let dy = 0; dy < kh; dy++) {
          const yFirst = first(py, dy, sy), yLast = last(py, dy, sy, h, oh);
          for (let dx = 0; dx < kw; dx++) {
            const weight = weights[((o * inC + i) * kh + dy) * kw + dx];
            if (weight === 0) continue;
            const xFirst = first(px, dx, sx), xLast = last(px, dx, sx, w, ow);
            for (let y = yFirst; y < yLast; y++) {
              const row = plane + (y * sy + dy - py) * w + dx - px, target = base + y * ow;
              for (let column = xFirst; column < xLast; column++) {
                out[target + column] += weight * input[row + column * sx];
              }
            }
          }
        }
      }
    }
    return { data: out, shape: [outC, oh, ow] };
  }

  // torch's nn.Upsample(size, mode="nearest") on the CPU: output index i reads min(in - 1, floor(i * scale)),
  // scale = in / out, with the scale and the product rounded to float32 as torch computes them (the exact
  // floor(i * in / out) picks another pixel at some sizes, e.g. 2 -> 82).
  function nearestSources(size, outSize) {
    const scale = Math.fround(size / outSize);
    return Int32Array.from({ length: outSize }, (_, i) => Math.min(size - 1, Math.floor(Math.fround(i * scale))));
  }
  function upsample(op, x) {
    const [c, h, w] = x.shape;
    const [oh, ow] = op.size;
    const rows = nearestSources(h, oh), columns = nearestSources(w, ow);
    const out = new Float64Array(c * oh * ow);
    for (let k = 0; k < c; k++) {
      for (let y = 0; y < oh; y++) {
        const source = (k * h + rows[y]) * w, target = (k * oh + y) * ow;
        for (let column = 0; column < ow; column++) out[target + column] = x.data[source + columns[column]];
      }
    }
    return { data: out, shape: [c, oh, ow] };
  }

  function run(ops, x) {
    for (const op of ops) {
      if (op.op === "linear") x = linear(op, x);
      else if (op.op === "conv2d") x = conv2d(op, x);
      else if (op.op === "upsample") x = upsample(op, x);
      else if (op.op === "reshape") x = { data: x.data, shape: op.shape };
      else if (op.op === "act") x = { data: x.data.map(ACTIVATIONS[op.name]), shape: x.shape };
      else if (op.op === "residual") {
        const branch = run(op.ops, x);
        x = { data: x.data.map((value, i) => value + branch.data[i]), shape: x.shape };
      } else throw new Error("unknown decoder op " + op.op);
    }
    return x;
  }

  // --- E[x|h] from the parameters, as vaelab.distributions computes it ---------------------------
  const LEVELS = 255, HALF_BIN = 1 / 255;
  const channels = data.decoder.channels, positions = data.decoder.positions;
  // E[v] = sum_{j=1}^{255} sigmoid((mu - e_j) / s), e_j = y_j - 1/255 the lower edge of level j's bin. With
  // t_j = exp((e_j - mu) / s) the terms are 1 / (1 + t_j) and t_{j+1} = r t_j, r = exp(2 / (255 s)): two exp
  // per subpixel instead of 255. The walk starts at the level nearest mu and goes both ways, so a t that
  // underflows to 0 (or overflows to infinity) only does so where the terms are 1 (or 0) to double precision.
  function logisticMean(location, logScale) {
    const inverseScale = Math.exp(-Math.max(logScale, data.decoder.log_scale_min));
    const ratio = Math.exp(2 * HALF_BIN * inverseScale);
    const nearest = Math.min(LEVELS, Math.max(1, Math.round(((location + 1) * LEVELS + 1) / 2)));
    const start = Math.exp((2 * nearest / LEVELS - 1 - HALF_BIN - location) * inverseScale);
    let expected = 1 / (1 + start);
    for (let j = nearest + 1, t = start; j <= LEVELS; j++) expected += 1 / (1 + (t *= ratio));
    for (let j = nearest - 1, t = start; j >= 1; j--) expected += 1 / (1 + (t /= ratio));
    return expected / LEVELS;
  }
  function means(params) {
    const kind = data.decoder.likelihood, size = channels * positions;
    if (kind === "bernoulli") return params.map(sigmoid);
    if (kind === "gaussian") return params;
    if (kind === "logistic") {
      const out = new Float64Array(size);
      for (let i = 0; i < size; i++) out[i] = logisticMean(params[i], params[size + i]);
      return out;
    }
    if (kind !== "logistic-mixture") throw new Error("no mean for the likelihood " + kind);
    // logistic-mixture: rows (M, S) = K logits, K*C locations, K*C log-scales, K*C(C-1)/2 coefficients
    const K = data.decoder.components, C = channels, S = positions, pairs = (C * (C - 1)) / 2;
    const at = (row, s) => params[row * S + s];
    const out = new Float64Array(size);
    for (let s = 0; s < S; s++) {
      let top = -Infinity;
      for (let k = 0; k < K; k++) top = Math.max(top, at(k, s));
      const weights = [];
      let total = 0;
      for (let k = 0; k < K; k++) { weights.push(Math.exp(at(k, s) - top)); total += weights[k]; }
      for (let k = 0; k < K; k++) {
        const component = [];
        for (let c = 0; c < C; c++) {
          let location = at(K + k * C + c, s);
          for (let e = 0; e < c; e++) {
            location += Math.tanh(at(K + 2 * K * C + k * pairs + (c * (c - 1)) / 2 + e, s)) * (2 * component[e] - 1);
          }
          component.push(logisticMean(location, at(K + K * C + k * C + c, s)));
          out[c * S + s] += (weights[k] / total) * component[c];
        }
      }
    }
    return out;
  }

  function parameters(h) {
    return run(program, { data: Float64Array.from(h), shape: [h.length] }).data;
  }
  const decode = (h) => means(parameters(h));

  // --- the plane: h = center + sum_j c_j directions[j]; the pointer sets c_0, c_1 ---------------
  const plane = data.plane;
  const dim = plane.dim;
  const center = float32s(plane.center);
  const directions = float32s(plane.directions); // (dim, dim), orthonormal rows
  const coordinates = new Float64Array(Math.max(dim, 2));
  const extent = plane.view_extent;

  function latentAt(c) {
    const h = Float64Array.from(center);
    for (let j = 0; j < dim; j++) {
      if (c[j] === 0) continue;
      for (let k = 0; k < dim; k++) h[k] += c[j] * directions[j * dim + k];
    }
    return h;
  }

  // --- the decoded image: one canvas pixel per image pixel, level round(255 E[x|h]): RGB for 3 channels, grey for
  // one, and any other number of channels as grey tiles side by side (channel c at columns c W .. c W + W - 1)
  const [imageChannels, height, width] = data.image_shape;
  const rgb = imageChannels === 3, tiles = rgb ? 1 : imageChannels;
  const imageCanvas = document.getElementById("decoded");
  imageCanvas.width = width * tiles;
  imageCanvas.height = height;
  const imageContext = imageCanvas.getContext("2d", { willReadFrequently: true });

  function drawImage(means) {
    const image = imageContext.createImageData(width * tiles, height);
    const level = (value) => Math.round(255 * Math.min(1, Math.max(0, value)));
    const plane = width * height;
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const p = y * width + x;
        for (let tile = 0; tile < tiles; tile++) {
          const at = 4 * (y * width * tiles + tile * width + x);
          for (let c = 0; c < 3; c++) image.data[at + c] = level(means[(rgb ? c : tile) * plane + p]);
          image.data[at + 3] = 255;
        }
      }
    }
    imageContext.putImageData(image, 0, 0);
  }

  // --- the plane view: the test codes as dots (coloured by label), the current point ------------
  const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                   "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  const UNLABELLED = "#7f8ea3";
  const planeCanvas = document.getElementById("plane");
  const ratio = window.devicePixelRatio || 1;
  const side = Math.round(planeCanvas.getBoundingClientRect().width || 400);
  planeCanvas.width = planeCanvas.height = Math.round(side * ratio);
  const planeContext = planeCanvas.getContext("2d");
  const toPixel = (value) => ((value / extent + 1) / 2) * planeCanvas.width; // u -> x; v -> height - y

  function niceStep(range) {  // 1, 2 or 5 times a power of ten, for about six grid lines
    const rough = range / 6;
    const power = Math.pow(10, Math.floor(Math.log10(rough)));
    return [1, 2, 5, 10].map((m) => m * power).find((step) => step >= rough);
  }

  const background = document.createElement("canvas");
  background.width = background.height = planeCanvas.width;
  (function drawBackground() {
    const context = background.getContext("2d");
    const size = background.width;
    context.fillStyle = "#ffffff";
    context.fillRect(0, 0, size, size);
    const step = niceStep(2 * extent);
    context.font = `${10 * ratio}px system-ui, sans-serif`;
    context.fillStyle = "#8a94a6";
    for (let tick = -Math.floor(extent / step) * step; tick <= extent + 1e-9; tick += step) {
      const at = toPixel(tick);
      context.strokeStyle = Math.abs(tick) < 1e-9 ? "#b8c0cc" : "#edf0f4";
      context.lineWidth = ratio;
      context.beginPath();
      context.moveTo(at, 0); context.lineTo(at, size);
      context.moveTo(0, size - at); context.lineTo(size, size - at);
      context.stroke();
      const label = Number(tick.toPrecision(3)).toString();
      context.fillText(label, at + 3 * ratio, size - 4 * ratio);
      if (Math.abs(tick) > 1e-9) context.fillText(label, 3 * ratio, size - at - 3 * ratio);
    }
    if (plane.kind === "latent") {
      // the prior's 1 and 2 standard-deviation circles
      context.strokeStyle = "#c9d2e0";
      context.setLineDash([4 * ratio, 4 * ratio]);
      for (const radius of [1, 2]) {
        context.beginPath();
        context.arc(toPixel(0), toPixel(0), (radius / extent) * (size / 2), 0, 2 * Math.PI);
        context.stroke();
      }
      context.setLineDash([]);
    }
    const points = float32s(data.points.coordinates); // (N, 2)
    const labels = data.points.labels; // null for draws from the prior
    context.globalAlpha = 0.5;
    for (let n = 0; n < data.points.count; n++) {
      context.fillStyle = labels ? COLOURS[labels[n] % COLOURS.length] : UNLABELLED;
      context.beginPath();
      context.arc(toPixel(points[2 * n]), size - toPixel(points[2 * n + 1]), 1.7 * ratio, 0, 2 * Math.PI);
      context.fill();
    }
    context.globalAlpha = 1;
  })();

  function drawPlane() {
    planeContext.drawImage(background, 0, 0);
    const x = toPixel(coordinates[0]);
    const y = planeCanvas.height - toPixel(coordinates[1]);
    planeContext.lineWidth = 2 * ratio;
    for (const [colour, radius] of [["#ffffff", 8], ["#111111", 6]]) {
      planeContext.strokeStyle = colour;
      planeContext.beginPath();
      planeContext.arc(x, y, radius * ratio, 0, 2 * Math.PI);
      planeContext.stroke();
    }
  }

  // --- the legend, the sliders, the readout ---------------------------------------------------
  const legend = document.getElementById("legend");
  [...new Set(data.points.labels || [])].sort((a, b) => a - b).forEach((label) => {
    const item = document.createElement("span");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = COLOURS[label % COLOURS.length];
    item.append(swatch, `label ${label}`);
    legend.append(item);
  });

  const format = (value) => (Math.abs(value) < 5e-5 ? "0.00" : value.toFixed(2)).replace("-", "\u2212");
  const sliders = [];
  const sliderBox = document.getElementById("sliders");
  for (let j = 2; j < dim; j++) {
    const label = document.createElement("label");
    const name = document.createElement("span");
    name.textContent = `${plane.names[j]} \u00b7 ${(100 * plane.variance_shares[j]).toFixed(1)}%`;
    name.title = `standard deviation of the test codes along this direction: ${plane.sigmas[j].toFixed(3)}`;
    const input = document.createElement("input");
    Object.assign(input, { type: "range", min: -plane.ranges[j], max: plane.ranges[j], step: "any", value: 0 });
    input.dataset.index = j;
    const shown = document.createElement("output");
    shown.textContent = format(0);
    input.addEventListener("input", () => {
      coordinates[j] = input.valueAsNumber;
      update();
    });
    label.append(name, input, shown);
    sliderBox.append(label);
    sliders[j] = { input, shown };
  }

  const readout = document.getElementById("readout");
  function showReadout(h) {
    const shownH = Array.from(h.slice(0, 8), format).join(", ") + (h.length > 8 ? `, \u2026 (${h.length})` : "");
    readout.textContent =
      `${plane.names[0]} = ${format(coordinates[0])}, ${plane.names[1] || "\u2014"} = ${format(coordinates[1])}` +
      `\nh = (${shownH})`;
  }

  // --- one update: coordinates -> h -> image; what tests read ---------------------------------
  function update() {
    const h = latentAt(coordinates);
    drawImage(decode(h));
    drawPlane();
    sliders.forEach((slider, j) => {
      if (slider) slider.shown.textContent = format(coordinates[j]);
    });
    showReadout(h);
    window.latentPoint = { coordinates: Array.from(coordinates.slice(0, dim)), h: Array.from(h) };
    return window.latentPoint;
  }

  window.decodeAt = function (u, v) {
    coordinates[0] = u;
    coordinates[1] = dim > 1 ? v : 0;
    return update();
  };
  window.explorerDecoder = {
    parameters: (h) => Array.from(parameters(h)),
    means: (params) => Array.from(means(Float64Array.from(params))),
  };
  window.setCoordinate = function (j, value) {
    coordinates[j] = value;
    if (sliders[j]) sliders[j].input.value = value;
    return update();
  };

  // --- the pointer (and the arrow keys) move the point ------------------------------------------
  function fromPointer(event) {
    const box = planeCanvas.getBoundingClientRect();
    const u = (((event.clientX - box.left) / box.width) * 2 - 1) * extent;
    const v = (1 - ((event.clientY - box.top) / box.height) * 2) * extent;
    window.decodeAt(u, v);
  }
  planeCanvas.addEventListener("pointermove", fromPointer);
  planeCanvas.addEventListener("pointerdown", fromPointer);
  planeCanvas.addEventListener("keydown", (event) => {
    const step = (event.shiftKey ? 0.2 : 0.04) * extent;
    const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, step], ArrowDown: [0, -step] };
    if (!(event.key in moves)) return;
    event.preventDefault();
    const clamp = (value) => Math.min(extent, Math.max(-extent, value));
    window.decodeAt(clamp(coordinates[0] + moves[event.key][0]), clamp(coordinates[1] + moves[event.key][1]));
  });
  document.getElementById("reset").addEventListener("click", () => {
    coordinates.fill(0);
    sliders.forEach((slider) => slider && (slider.input.value = 0));
    update();
  });

  update();
  window.explorerReady = true;
})();

// Figures: a click widens one to the page's width (and back), for the detailed ones.
document.querySelectorAll(".figures figure").forEach((figure) => {
  figure.addEventListener("click", () => figure.classList.toggle("wide"));
});
"""
