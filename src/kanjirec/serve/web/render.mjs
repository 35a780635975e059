// Pen strokes -> the model's input image: the JavaScript twin of kanjirec.data.pen.strokes_to_image.
// Its docstring gives the convention step by step; the constants below are copied from pen.py and
// synth.py, and tests/test_web_render.py checks that both give the same image for the same strokes.

export const KANJIVG_BOX = 109.0;
export const TYPICAL_EXTENT = 85.0;
export const SIZE_FRACTION = 0.88;
export const PEN_SIGMA = 0.74;
export const INK_GAIN = 2.25;
export const INK_LEVEL = 0.75;
const MAX_LEVEL = 15;
const PAD = 3;
const DENSE_SPACING = 1.0;

// A polyline resampled every `spacing` along its arc, ends kept (pen._resample).
function resample(points, spacing) {
  const arc = [0];
  for (let i = 1; i < points.length; i++) {
    arc.push(arc[i - 1] + Math.hypot(points[i][0] - points[i - 1][0], points[i][1] - points[i - 1][1]));
  }
  const total = arc[arc.length - 1];
  if (total === 0) return [points[0]];
  const n = Math.max(2, Math.ceil(total / spacing) + 1);
  const out = [];
  let j = 0;
  for (let k = 0; k < n; k++) {
    const t = (total * k) / (n - 1);
    while (j < arc.length - 2 && arc[j + 1] <= t) j++;
    const span = arc[j + 1] - arc[j];
    const f = span > 0 ? Math.min(1, Math.max(0, (t - arc[j]) / span)) : 0;
    out.push([
      points[j][0] + f * (points[j + 1][0] - points[j][0]),
      points[j][1] + f * (points[j + 1][1] - points[j][1]),
    ]);
  }
  return out;
}

// (size, side) Gaussian blur-and-crop matrix, row-major (synth._blur_matrix).
function blurMatrix(sigma, side, pad) {
  const size = side - 2 * pad;
  const radius = Math.ceil(3 * sigma);
  let norm = 0;
  for (let o = -radius; o <= radius; o++) norm += Math.exp(-(o * o) / (2 * sigma * sigma));
  const k = new Float64Array(size * side);
  for (let i = 0; i < size; i++) {
    for (let j = 0; j < side; j++) {
      const o = j - (i + pad);
      if (Math.abs(o) <= radius) k[i * side + j] = Math.exp(-(o * o) / (2 * sigma * sigma)) / norm;
    }
  }
  return k;
}

// Per grey level, the output value: background (median level) -> 0, the 95th percentile of the
// levels above it -> 255 (synth._contrast_tables).
function contrastTable(hist) {
  const levels = hist.length;
  const cum = [];
  let c = 0;
  for (const h of hist) cum.push((c += h));
  const all = cum[levels - 1];
  let background = 0;
  for (const v of cum) if (v * 2 < all) background++;
  const ink = [];
  let s = 0;
  for (let l = 0; l < levels; l++) ink.push((s += l <= background ? 0 : hist[l]));
  const inkAll = ink[levels - 1];
  let top = background;
  if (inkAll > 0) {
    top = 0;
    for (const v of ink) if (v * 100 < inkAll * 95) top++;
  }
  const scale = Math.max(top - background, 0.5);
  // float32 arithmetic and round-half-to-even, as numpy computes it, so the tables agree exactly
  return hist.map((_, l) => {
    const v = Math.fround(Math.min(1, Math.max(0, Math.fround((l - background) / scale))) * 255);
    const r = Math.round(v);
    return r - v === 0.5 && r % 2 === 1 ? r - 1 : r;
  });
}

/**
 * Strokes (each an array of [x, y] points in canvas units, in writing order) on a width x height
 * canvas -> a Uint8Array of size * size pixels, row-major, ink 255 on 0.
 */
export function strokesToImage(strokes, width, height, size = 64) {
  if (!strokes.length || strokes.some((s) => s.length === 0)) {
    throw new Error("expected at least one stroke, each with at least one point");
  }
  // 1. the bounding box and its extent
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const s of strokes) {
    for (const [x, y] of s) {
      x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x); y1 = Math.max(y1, y);
    }
  }
  const extent = Math.max(x1 - x0, y1 - y0, 0.01 * Math.max(width, height));
  const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
  // 2.-3. canvas units -> KanjiVG units about the box centre -> image pixels
  const px = size / 64;
  const scale = (((TYPICAL_EXTENT / extent) * size * SIZE_FRACTION) / KANJIVG_BOX);
  const spacing = DENSE_SPACING * px;
  // 4.-5. resample, then splat bilinearly into a canvas with a border of PAD (pixel centres on integers)
  const side = size + 2 * PAD;
  const canvas = new Float64Array(side * side);
  for (const s of strokes) {
    const placed = s.map(([x, y]) => [(x - cx) * scale + size / 2, (y - cy) * scale + size / 2]);
    for (const [ix, iy] of resample(placed, spacing)) {
      let x = ix + PAD - 0.5, y = iy + PAD - 0.5;
      if (x < 0 || y < 0 || x >= side - 1 || y >= side - 1) continue;
      const fx = Math.floor(x), fy = Math.floor(y);
      x -= fx; y -= fy;
      const at = fy * side + fx;
      canvas[at] += spacing * (1 - y) * (1 - x);
      canvas[at + 1] += spacing * (1 - y) * x;
      canvas[at + side] += spacing * y * (1 - x);
      canvas[at + side + 1] += spacing * y * x;
    }
  }
  // Gaussian pen: K canvas K^T, cropped by PAD, times the ink gain
  const sigma = PEN_SIGMA * px;
  const gain = -INK_GAIN * Math.sqrt(2 * Math.PI) * sigma;
  const k = blurMatrix(sigma, side, PAD);
  const rows = new Float64Array(side * size); // canvas K^T
  for (let r = 0; r < side; r++) {
    for (let i = 0; i < size; i++) {
      let acc = 0;
      for (let j = 0; j < side; j++) acc += canvas[r * side + j] * k[i * side + j];
      rows[r * size + i] = acc * gain;
    }
  }
  // the saturating ink curve, quantised to 16 grey levels, then the contrast stretch
  const levels = new Uint8Array(size * size);
  const hist = new Array(MAX_LEVEL + 1).fill(0);
  const norm = 1 - Math.exp(-INK_GAIN);
  for (let i = 0; i < size; i++) {
    for (let c = 0; c < size; c++) {
      let density = 0;
      for (let j = 0; j < side; j++) density += k[i * side + j] * rows[j * size + c];
      const ink = -Math.expm1(density) / norm;
      const level = Math.floor(Math.min(MAX_LEVEL, Math.max(0, ink * MAX_LEVEL * INK_LEVEL)) + 0.5);
      levels[i * size + c] = level;
      hist[level]++;
    }
  }
  const table = contrastTable(hist);
  return levels.map((l) => table[l]);
}
