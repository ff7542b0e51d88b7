// recae's page: search titles, rate with stars, and show the fold-in recommendations with their reasons.
// Plain DOM, no framework, no build step; every text goes in through textContent (never innerHTML).
"use strict";

const ratings = new Map();          // movie_id -> {movie, stars}
let pending = null;                 // debounce timer for the recommendation request
let latest = 0;                     // sequence number: only the newest answer is shown

const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

function label(movie) {
  return movie.title || `movie ${movie.movie_id}`;
}

function status(message) {
  $("status").textContent = message || "";
}

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.message || `${response.status} ${response.statusText}`);
  return body;
}

function stars(movie) {
  const box = el("span", "stars");
  const current = ratings.has(movie.movie_id) ? ratings.get(movie.movie_id).stars : 0;
  for (let value = 1; value <= 5; value += 1) {
    const button = el("button", value <= current ? "on" : "", "\u2605");
    button.type = "button";
    button.dataset.stars = String(value);
    button.setAttribute("aria-label", `Rate ${label(movie)} ${value} of 5`);
    button.addEventListener("click", () => rate(movie, value));
    box.append(button);
  }
  return box;
}

function filmRow(movie, extra) {
  const row = el("li");
  row.dataset.movieId = String(movie.movie_id);
  const text = el("span");
  text.append(el("span", "title", label(movie)));
  const meta = [movie.year, (movie.genres || "").replaceAll("|", ", ")].filter(Boolean).join(" \u00b7 ");
  if (meta) text.append(el("div", "meta", meta));
  row.append(text, extra);
  return row;
}

let results = [];

function showResults() {
  const list = $("results");
  list.replaceChildren(...results.map((movie) => filmRow(movie, stars(movie))));
  if (!results.length && $("search").value.trim()) list.append(el("li", "empty", "No title matches."));
}

async function search(event) {
  if (event) event.preventDefault();
  const query = $("search").value.trim();
  if (!query) return;
  try {
    const body = await api(`/v1/movies?query=${encodeURIComponent(query)}&limit=12`);
    results = body.movies;
    showResults();
    status("");
  } catch (err) {
    status(`Search failed: ${err.message}`);
  }
}

function showRated() {
  const list = $("rated");
  const rows = [...ratings.values()].map(({ movie }) => {
    const controls = el("span", "stars-wrap");
    const remove = el("button", "remove", "remove");
    remove.type = "button";
    remove.setAttribute("aria-label", `Remove ${label(movie)}`);
    remove.addEventListener("click", () => { ratings.delete(movie.movie_id); changed(); });
    controls.append(stars(movie), remove);
    return filmRow(movie, controls);
  });
  if (!rows.length) rows.push(el("li", "empty", "None yet: search above and click the stars."));
  list.replaceChildren(...rows);
  $("rated-count").textContent = String(ratings.size);
}

function rate(movie, value) {
  ratings.set(movie.movie_id, { movie, stars: value });
  changed();
}

function changed() {
  showRated();
  showResults();
  clearTimeout(pending);
  pending = setTimeout(recommend, 150);
}

function recommendationList(target, films) {
  target.replaceChildren(...films.map((film) => {
    const item = el("li");
    item.dataset.movieId = String(film.movie_id);
    item.append(el("span", "predicted", `${film.predicted_rating.toFixed(1)} \u2605`));
    item.append(el("span", "title", label(film)));
    const meta = [film.year, (film.genres || "").replaceAll("|", ", ")].filter(Boolean).join(" \u00b7 ");
    if (meta) item.append(el("div", "meta", meta));
    if (film.because && film.because.length) {
      const names = film.because.map((reason) => `${reason.title || `movie ${reason.movie_id}`} (${reason.rating}\u2605)`);
      item.append(el("div", "because", `Because you rated ${names.join(", ")}`));
    }
    return item;
  }));
}

async function recommend() {
  const mine = ++latest;
  if (!ratings.size) {
    $("recommendations").replaceChildren();
    $("recs-hint").hidden = false;
    return;
  }
  const body = { ratings: Object.fromEntries([...ratings].map(([id, r]) => [id, r.stars])), n: 10, explain: true };
  try {
    const answer = await api("/v1/recommendations", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    if (mine !== latest) return;
    $("recs-hint").hidden = true;
    recommendationList($("recommendations"), answer.recommendations);
    status("");
  } catch (err) {
    if (mine === latest) status(`Recommendations failed: ${err.message}`);
  }
}

async function knownUser(event) {
  event.preventDefault();
  const id = $("user-id").value.trim();
  if (!/^[0-9]+$/.test(id)) { status("A user id is a positive whole number."); return; }
  try {
    const answer = await api(`/v1/users/${id}/recommendations?n=10`);
    recommendationList($("user-recommendations"), answer.recommendations);
    status("");
  } catch (err) {
    $("user-recommendations").replaceChildren();
    status(err.message);
  }
}

async function showModel() {
  try {
    const model = await api("/v1/model");
    const rmse = model.metrics && typeof model.metrics.test_rmse === "number" ? `, test RMSE ${model.metrics.test_rmse.toFixed(4)}` : "";
    $("model").textContent = `Model ${model.version}${rmse}`;
  } catch (err) {
    $("model").textContent = `No model serves yet (${err.message}).`;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("search-form").addEventListener("submit", search);
  let typing = null;
  $("search").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(search, 250); });
  $("user-form").addEventListener("submit", knownUser);
  showModel();
});
