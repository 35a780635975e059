// The "Draw a kanji" page: a writing pad whose strokes are recognised after every stroke, in the
// browser (onnxruntime-web, WASM) or, when WebAssembly or the runtime is unavailable or the user
// asks for it, by the server's POST /recognize (the raw strokes as JSON). Every URL is relative, so
// the same files work under `kanjirec serve` and on any static host (`kanjirec export-web`).

import { strokesToImage } from "./render.mjs";

const TOP_K = 10;
const $ = (id) => document.getElementById(id);
const pad = $("pad");
const ctx = pad.getContext("2d");
const statusLine = $("status");
const backendSelect = $("backend");
const candidateList = $("candidates");
const textField = $("text");

// State the tests and the benchmark read: `version` counts changes to the drawing, `shown` is the
// version whose candidates are on screen, `timings` the ms from each change to its candidates.
const state = { strokes: [], version: 0, shown: 0, timings: [], backend: null, config: null, session: null };
window.kanjirecPage = state;

function setStatus(text, warn = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("warn", warn);
}

// ---------------------------------------------------------------- recognisers

async function loadWasm(config) {
  const ort = await import("./vendor/ort.wasm.bundle.min.mjs");
  ort.env.wasm.numThreads = 1; // threads need cross-origin isolation, which a plain static host lacks
  const session = await ort.InferenceSession.create(config.model, { executionProviders: ["wasm"] });
  const size = config.image_size;
  return async (strokes) => {
    const image = strokesToImage(strokes, pad.clientWidth, pad.clientHeight, size);
    const input = new ort.Tensor("float32", Float32Array.from(image, (v) => v / 255), [1, 1, size, size]);
    const output = await session.run({ [session.inputNames[0]]: input });
    return topK(output[session.outputNames[0]].data, config.classes);
  };
}

function topK(logits, classes) {
  let max = -Infinity;
  for (const v of logits) max = Math.max(max, v);
  const exp = Float64Array.from(logits, (v) => Math.exp(v - max));
  const sum = exp.reduce((a, b) => a + b, 0);
  const order = Array.from(exp.keys()).sort((a, b) => exp[b] - exp[a] || a - b);
  return order.slice(0, TOP_K).map((i) => ({ char: classes[i], prob: exp[i] / sum }));
}

async function askServer(init) {
  const response = await fetch(`recognize?top_k=${TOP_K}`, { method: "POST", ...init });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(answer.detail || `the server answered ${response.status}`);
  return answer.candidates;
}

// The raw strokes, as POST /recognize takes them: the server renders them (or a stroke model reads them).
function serverRecognizer() {
  return (strokes) =>
    askServer({
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ width: pad.clientWidth, height: pad.clientHeight, strokes }),
    });
}

const recognizers = {};

async function chooseBackend(wanted) {
  const config = state.config;
  if (wanted === "wasm") {
    const why =
      typeof WebAssembly !== "object"
        ? "WebAssembly is not available in this browser"
        : !config.model
          ? config.model_note
          : !config.runtime
            ? "the in-browser runtime (onnxruntime-web) is not installed on this server"
            : null;
    if (why === null) {
      try {
        recognizers.wasm ??= await loadWasm(config);
        state.backend = "wasm";
        setStatus(`Recognising in this browser (WASM, ${config.name}); nothing is sent to a server.`);
        return;
      } catch (error) {
        return fallBack(`the in-browser model did not load (${error.message})`);
      }
    }
    return fallBack(why);
  }
  if (!config.server) {
    backendSelect.value = state.backend ?? "wasm";
    return setStatus("This copy of the page has no server: it recognises in the browser only.", true);
  }
  recognizers.server ??= serverRecognizer();
  state.backend = "server";
  setStatus(`Recognising on the server (POST /recognize, the raw strokes; ${config.name}).`);
}

function fallBack(why) {
  backendSelect.value = "server";
  backendSelect.querySelector('option[value="wasm"]').disabled = true;
  if (!state.config.server) {
    state.backend = null;
    return setStatus(`Cannot recognise: ${why}, and this copy of the page has no server.`, true);
  }
  recognizers.server ??= serverRecognizer();
  state.backend = "server";
  setStatus(`${why[0].toUpperCase()}${why.slice(1)}: recognising on the server instead (POST /recognize).`, true);
}

// ---------------------------------------------------------------- recognising after every stroke

// One recognition at a time; changes made meanwhile are coalesced into the next one.
let running = false;
let changedAt = 0;

function changed() {
  state.version++;
  changedAt = performance.now();
  redraw();
  if (!running) recognizeLoop();
}

async function recognizeLoop() {
  running = true;
  try {
    while (state.shown !== state.version) {
      const version = state.version;
      const started = changedAt;
      const strokes = state.strokes.map((s) => s.map((p) => [p.x, p.y]));
      if (!strokes.length || !state.backend) {
        showCandidates([], version);
        continue;
      }
      try {
        const candidates = await recognizers[state.backend](strokes);
        if (version !== state.version) continue; // stale: the drawing changed meanwhile
        showCandidates(candidates, version);
        state.timings.push({ backend: state.backend, strokes: strokes.length, ms: performance.now() - started });
      } catch (error) {
        setStatus(`Recognition failed: ${error.message}`, true);
        showCandidates([], version);
      }
    }
  } finally {
    running = false;
  }
}

function showCandidates(candidates, version) {
  candidateList.replaceChildren(
    ...candidates.map(({ char, prob }, i) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.title = `${char}: ${(prob * 100).toFixed(1)}% (key ${(i + 1) % 10})`;
      button.innerHTML = '<span class="char"></span><span class="prob"></span>';
      button.querySelector(".char").textContent = char;
      button.querySelector(".prob").textContent = `${(prob * 100).toFixed(1)}%`;
      button.addEventListener("click", () => pick(char));
      item.append(button);
      return item;
    }),
  );
  state.shown = version;
  candidateList.dataset.version = String(version);
}

async function pick(char) {
  textField.value += char;
  try {
    await navigator.clipboard.writeText(char);
    setStatus(`Copied ${char} to the clipboard and added it to the text.`);
  } catch (error) {
    setStatus(`Added ${char} to the text (the browser refused the clipboard: ${error.message}).`, true);
  }
}

// ---------------------------------------------------------------- the pad

let current = null; // the stroke being drawn: [{x, y, width}]

function point(event) {
  const box = pad.getBoundingClientRect();
  // Pressure only widens the line on screen; the model's input uses one pen width, as in training.
  const pressure = event.pointerType === "pen" && event.pressure > 0 ? event.pressure : 0.5;
  return { x: event.clientX - box.left, y: event.clientY - box.top, width: 2 + 6 * pressure };
}

pad.addEventListener("pointerdown", (event) => {
  if (event.button !== 0) return;
  pad.setPointerCapture(event.pointerId);
  current = [point(event)];
  state.strokes.push(current);
  redraw();
});
pad.addEventListener("pointermove", (event) => {
  if (!current) return;
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  for (const e of events.length ? events : [event]) current.push(point(e));
  redraw();
});
function endStroke() {
  if (!current) return;
  current = null;
  changed();
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

function undo() {
  if (!state.strokes.length) return;
  current = null;
  state.strokes.pop();
  changed();
}

function clear() {
  current = null;
  state.strokes = [];
  changed();
}

function fitCanvas() {
  const scale = window.devicePixelRatio || 1;
  const side = Math.round(pad.clientWidth * scale);
  if (pad.width !== side) {
    pad.width = pad.height = side;
    redraw();
  }
}

function redraw() {
  const scale = pad.width / (pad.clientWidth || 1);
  ctx.setTransform(scale, 0, 0, scale, 0, 0);
  const side = pad.clientWidth;
  ctx.clearRect(0, 0, side, side);
  ctx.strokeStyle = "#e6e0d2";
  ctx.lineWidth = 1;
  ctx.setLineDash([4, 4]);
  ctx.beginPath();
  ctx.moveTo(side / 2, 0); ctx.lineTo(side / 2, side);
  ctx.moveTo(0, side / 2); ctx.lineTo(side, side / 2);
  ctx.stroke();
  ctx.setLineDash([]);
  ctx.strokeStyle = "#1a1a1a";
  ctx.fillStyle = "#1a1a1a";
  ctx.lineCap = ctx.lineJoin = "round";
  for (const stroke of state.strokes) {
    if (stroke.length === 1) {
      ctx.beginPath();
      ctx.arc(stroke[0].x, stroke[0].y, stroke[0].width / 2, 0, 2 * Math.PI);
      ctx.fill();
    }
    for (let i = 1; i < stroke.length; i++) {
      ctx.lineWidth = stroke[i].width;
      ctx.beginPath();
      ctx.moveTo(stroke[i - 1].x, stroke[i - 1].y);
      ctx.lineTo(stroke[i].x, stroke[i].y);
      ctx.stroke();
    }
  }
}

// ---------------------------------------------------------------- images (upload and paste)

// An image is read by the server, which brings it to the model's convention
// (kanjirec.recognizer.to_convention); the page does not copy that step into JavaScript.
async function recognizeImage(file) {
  if (!state.config.server) {
    return setStatus("Reading images needs the server (kanjirec serve); this copy reads drawings only.", true);
  }
  const form = new FormData();
  form.append("image", file, file.name || "pasted image");
  clear();
  try {
    const candidates = await askServer({ body: form });
    showCandidates(candidates, state.version);
    setStatus(`Candidates for the image ${file.name || "pasted from the clipboard"} (read on the server).`);
  } catch (error) {
    setStatus(`The image could not be read: ${error.message}`, true);
  }
}

$("upload").addEventListener("change", (event) => {
  const [file] = event.target.files;
  if (file) recognizeImage(file);
  event.target.value = "";
});
document.addEventListener("paste", (event) => {
  const file = [...event.clipboardData.files].find((f) => f.type.startsWith("image/"));
  if (file) {
    event.preventDefault();
    recognizeImage(file);
  }
});

// ---------------------------------------------------------------- controls and start

$("undo").addEventListener("click", undo);
$("clear").addEventListener("click", clear);
backendSelect.addEventListener("change", () => chooseBackend(backendSelect.value).then(() => changed()));
document.addEventListener("keydown", (event) => {
  if (event.target === textField || event.altKey) return;
  const mod = event.ctrlKey || event.metaKey;
  if ((mod && event.key === "z") || (!mod && event.key === "Backspace")) undo();
  else if (!mod && (event.key === "Escape" || event.key === "Delete")) clear();
  else if (!mod && /^[0-9]$/.test(event.key)) {
    const button = candidateList.querySelectorAll("button")[(Number(event.key) + 9) % 10];
    if (button) button.click();
    else return;
  } else return;
  event.preventDefault();
});
new ResizeObserver(fitCanvas).observe(pad);

async function start() {
  try {
    const response = await fetch("model.json");
    if (!response.ok) throw new Error(`model.json: ${response.status}`);
    state.config = await response.json();
  } catch (error) {
    return setStatus(`The page cannot start: ${error.message}`, true);
  }
  if (!state.config.server) backendSelect.querySelector('option[value="server"]').disabled = true;
  const wanted = new URLSearchParams(location.search).get("backend") === "server" ? "server" : "wasm";
  backendSelect.value = wanted;
  await chooseBackend(wanted);
  document.body.dataset.ready = state.backend ?? "none";
}

start();
