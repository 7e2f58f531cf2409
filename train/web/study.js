// The study page: join, then play each game the server opens, as receiver or as sender.
// Everything the page knows comes from the server's JSON API (see train/serve.py); the
// participant's token sits in the address (?p=...) and in localStorage, so a reload or a
// later visit continues at the next game.
"use strict";

const app = document.getElementById("app");
const STORAGE_KEY = "sketchenv-study-token";
let token = new URLSearchParams(location.search).get("p") || localStorage.getItem(STORAGE_KEY);

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  };
  const response = await fetch("api/" + path, options);
  const reply = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new ApiError(response.status, reply.error || response.statusText);
  return reply;
}

// el("p", {class: "x"}, "text", child): a DOM element, so no HTML is built from strings.
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

function show(...nodes) {
  app.replaceChildren(...nodes);
  window.scrollTo(0, 0);
}

function picture(source, className = "large", alt = "") {
  return el("img", { src: source, class: className, alt: alt });
}

function progressBar(state, index) {
  const done = 100 * state.played / state.n_games;
  const score = state.wins === null ? "" : ` · ${state.wins} right so far`;
  const filled = el("div");
  filled.style.width = `${done}%`; // through the CSSOM: the page's policy allows no inline style
  return el("div", { class: "progress" },
    el("span", {}, `Game ${index + 1} of ${state.n_games}${score}`),
    el("div", { class: "bar" }, filled));
}

function failed(error) {
  show(el("h1", {}, "Something went wrong"), el("p", { class: "error" }, error.message),
    el("button", { onclick: () => location.reload() }, "Try again"));
}

// ----- start and end -------------------------------------------------------------------
async function start() {
  if (token) {
    try {
      return await next();
    } catch (error) {
      if (error.status !== 404) throw error;
      token = null; // a token this server does not know: join afresh
    }
  }
  const study = await api("study");
  const rules = study.role === "receiver"
    ? ["You will see a sketch and some pictures.", "Click the picture the sketch was drawn from."]
    : [`You will see a picture. Draw it freehand with at most ${study.n_lines} `
      + (study.stroke_format.startsWith("line")
        ? "straight lines: each drag becomes lines along its path, corners kept."
        : "curves: each drag becomes one smooth curve along its path."),
    "Then press Send: a computer will guess which of several pictures you drew."];
  rules.push(study.feedback ? "After each game you see the right answer."
    : "You are not told whether you were right.");
  rules.push(`There are ${study.n_games} games. You can stop and come back later with the`
    + " same link: your games are saved as you play.");
  show(el("h1", {}, "A drawing game"), el("ul", {}, ...rules.map((line) => el("li", {}, line))),
    el("button", { class: "primary", id: "start", onclick: join }, "Start"));
}

async function join() {
  token = (await api("join", {})).token;
  localStorage.setItem(STORAGE_KEY, token);
  history.replaceState(null, "", "?p=" + encodeURIComponent(token));
  await next();
}

async function next() {
  const state = await api(`participants/${token}`);
  if (state.next_game === null) {
    const score = state.wins === null ? "" : ` You were right ${state.wins} times.`;
    show(el("h1", { id: "done" }, "Thank you!"),
      el("p", {}, `All ${state.n_games} games are played and saved.${score}`),
      el("p", {}, "You can close this page."));
    return;
  }
  const game = await api(`participants/${token}/games/${state.next_game}`);
  (state.role === "receiver" ? receiverGame : senderGame)(state, game);
}

async function send(state, game, answer, onReply) {
  try {
    onReply(await api(`participants/${token}/games/${game.game}`, answer));
  } catch (error) {
    if (error.status === 409) return next(); // answered already (a double click, a reload)
    failed(error);
  }
}

function afterGame(state, reply, views) {
  if (!state.feedback) return next();
  const message = reply.correct ? "Right!" : "Not this one: the green picture was the one.";
  show(progressBar({ ...state, played: state.played + 1 }, reply.game),
    el("p", { class: "message", id: "feedback" }, message), ...views,
    el("button", { class: "primary", id: "next", onclick: next }, "Next game"));
}

function candidateGrid(sources, onPick, reply) {
  const grid = el("div", { class: "candidates" });
  sources.forEach((source, index) => {
    const button = el("button", { "data-index": index }, picture(source, "", `picture ${index + 1}`));
    if (reply && index === reply.target) button.classList.add("target");
    if (reply && index === reply.choice && !reply.correct) button.classList.add("picked");
    if (onPick) button.addEventListener("click", () => onPick(index, button));
    else button.disabled = true;
    grid.append(button);
  });
  return grid;
}

// ----- the participant as receiver -----------------------------------------------------
function receiverGame(state, game) {
  let shownAt = null;
  let answered = false;
  const pick = (choice, button) => {
    if (answered) return; // one answer per game, however often it is clicked
    answered = true;
    button.classList.add("picked");
    const seconds = (performance.now() - (shownAt ?? performance.now())) / 1000;
    send(state, game, { choice: choice, response_time: seconds }, (reply) =>
      afterGame(state, reply, [sketchPanel(game.sketch), candidateGrid(game.candidates, null, reply)]));
  };
  const grid = candidateGrid(game.candidates, pick);
  show(progressBar(state, game.game), sketchPanel(game.sketch),
    el("p", {}, "Which picture was this sketch drawn from? Click it."), grid);
  const images = [...app.querySelectorAll("img")];
  Promise.all(images.map((image) => image.decode().catch(() => null)))
    .then(() => { shownAt = performance.now(); });
}

function sketchPanel(source) {
  return el("div", { class: "panel" }, el("h2", {}, "The sketch"), picture(source, "large", "sketch"));
}

// ----- the participant as sender -------------------------------------------------------
// The person draws freehand; the page sends each drag's pointer path and the server makes
// the game's strokes from it (train/webstudy.py). Lines are previewed with the server's
// simplification (Ramer-Douglas-Peucker within one image pixel, capped to the lines left);
// a curve is previewed as the path itself (the server fits one Bezier curve to it).
const MIN_STEP = 0.01; // canvas units between two recorded points of a path

// The points of `points` kept by RDP within `tolerance`, at most `maxPoints` (the farthest
// point of the worst chord first), as sketchenv.human.simplify_path keeps them.
function simplify(points, tolerance, maxPoints = Infinity) {
  if (points.length === 1) return [points[0], points[0]];
  let kept = [0, points.length - 1];
  while (kept.length < maxPoints) {
    let worst = tolerance;
    let split = -1;
    for (let k = 0; k + 1 < kept.length; k++) {
      for (let i = kept[k] + 1; i < kept[k + 1]; i++) {
        const distance = segmentDistance(points[i], points[kept[k]], points[kept[k + 1]]);
        if (distance > worst) [worst, split] = [distance, i];
      }
    }
    if (split < 0) break;
    kept = [...kept, split].sort((x, y) => x - y);
  }
  return kept.map((i) => points[i]);
}

function segmentDistance([px, py], [ax, ay], [bx, by]) {
  const [dx, dy] = [bx - ax, by - ay];
  const length2 = dx * dx + dy * dy;
  const t = length2 > 0 ? Math.min(1, Math.max(0, ((px - ax) * dx + (py - ay) * dy) / length2)) : 0;
  return Math.hypot(px - ax - t * dx, py - ay - t * dy);
}

function senderGame(state, game) {
  const lines = (state.stroke_format || "line").split("+")[0] === "line";
  const noun = lines ? "lines" : "curves";
  const image = picture(game.image, "large", "your picture");
  const canvas = el("canvas", { class: "large", id: "canvas" });
  const count = el("span", { id: "count" });
  const drags = []; // per drag: its path and the points drawn (a polyline for lines)
  let path = null; // the drag in progress, [x, y] points in [-1, 1]
  const shownAt = performance.now();
  const used = () => drags.reduce((n, drag) => n + (lines ? drag.shape.length - 1 : 1), 0);
  const shape = (points) =>
    lines ? simplify(points, state.tolerance, state.n_lines - used() + 1) : points;

  const undo = el("button", { id: "undo", onclick: () => { drags.pop(); redraw(); } }, "Undo");
  const sendButton = el("button", { class: "primary", id: "send" }, "Send");
  sendButton.addEventListener("click", () => {
    if (!drags.length) return;
    sendButton.disabled = undo.disabled = true;
    const seconds = (performance.now() - shownAt) / 1000;
    const paths = drags.map((drag) => drag.path);
    send(state, game, { paths: paths, response_time: seconds }, (reply) =>
      afterGame(state, reply, [el("div", { class: "pictures" }, panel("Your picture", game.image),
        panel("Your sketch", reply.sketch ?? game.image)),
      el("p", {}, "The computer's guess is red when wrong; the green picture is yours."),
      candidateGrid(reply.candidates ?? [], null, reply)]));
  });

  // A point of the canvas in the game's coordinates: pixel centres of a W-pixel picture
  // sit at -1 + 2 i / (W - 1), as sketchenv's rasteriser has them (rounded: 1e-4 is far
  // below a pixel, and keeps the answer small).
  const size = () => image.naturalWidth || 64;
  const toGame = (event) => {
    const box = canvas.getBoundingClientRect();
    const unit = (offset, extent) => {
      const pixel = (offset / extent) * size() - 0.5;
      const value = Math.min(1, Math.max(-1, (2 * pixel) / (size() - 1) - 1));
      return Math.round(value * 1e4) / 1e4;
    };
    return [unit(event.clientX - box.left, box.width), unit(event.clientY - box.top, box.height)];
  };
  const toCanvas = ([x, y]) => [((x + 1) / 2) * canvas.width, ((y + 1) / 2) * canvas.height];

  function stroke(context, points, colour, width) {
    context.strokeStyle = colour;
    context.lineWidth = width;
    context.beginPath();
    context.moveTo(...toCanvas(points[0]));
    for (const point of points.length > 1 ? points.slice(1) : points) {
      context.lineTo(...toCanvas(point));
    }
    context.stroke();
  }

  function redraw() {
    const context = canvas.getContext("2d");
    context.fillStyle = "#fff";
    context.fillRect(0, 0, canvas.width, canvas.height);
    context.lineCap = context.lineJoin = "round";
    const width = canvas.width / 64;
    for (const drag of drags) stroke(context, drag.shape, "#000", width);
    if (path) {
      stroke(context, path, "#96bef0", width / 3);
      if (lines) stroke(context, shape(path), "#6e6e6e", width);
    }
    count.textContent = `${used()} of ${state.n_lines} ${noun}`;
    sendButton.disabled = drags.length === 0;
    undo.disabled = drags.length === 0;
  }

  canvas.addEventListener("pointerdown", (event) => {
    if (used() >= state.n_lines) return;
    canvas.setPointerCapture(event.pointerId);
    path = [toGame(event)];
  });
  canvas.addEventListener("pointermove", (event) => {
    if (path === null) return;
    const point = toGame(event);
    const last = path[path.length - 1];
    if (Math.hypot(point[0] - last[0], point[1] - last[1]) < MIN_STEP) return;
    path.push(point);
    redraw();
  });
  const finish = (event) => {
    if (path === null) return;
    const point = toGame(event);
    const last = path[path.length - 1];
    if (point[0] !== last[0] || point[1] !== last[1]) path.push(point);
    drags.push({ path: path, shape: shape(path) });
    path = null;
    redraw();
  };
  canvas.addEventListener("pointerup", finish);
  canvas.addEventListener("pointercancel", () => { path = null; redraw(); });

  show(progressBar(state, game.game),
    el("div", { class: "pictures" }, panel("Your picture", null, image),
      el("div", { class: "panel" }, el("h2", {}, "Draw it here"), canvas)),
    el("p", {}, count), undo, sendButton);
  canvas.width = canvas.height = 512;
  redraw();
}

function panel(title, source, content = picture(source)) {
  return el("div", { class: "panel" }, el("h2", {}, title), content);
}

start().catch(failed);
