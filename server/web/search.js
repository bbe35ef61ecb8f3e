// The search box above the session list: GET v1/sessions/search (with the API key) as one types,
// the hits in place of the list, each a link that opens its session.
//
// A snippet is the message's own text with the matching words between <mark> and </mark>. Those
// two markers are the only markup in it; everything else is text someone wrote, so it becomes
// text nodes, never HTML.

import { $, h, reportError } from "./dom.js";

export function marked(text) {
  const out = [];
  let inside = false;
  for (const part of String(text).split(/(<mark>|<\/mark>)/)) {
    if (part === "<mark>") inside = true;
    else if (part === "</mark>") inside = false;
    else if (part) out.push(inside ? h("mark", {}, part) : part);
  }
  return out;
}

function hitItem(hit, current) {
  const s = hit.session;
  return h("li", {},
    h("a", {
      href: `#${encodeURIComponent(s.id)}`, class: "session-link search-hit", dataset: { id: s.id },
      "aria-current": s.id === current ? "page" : null,
    },
    h("span", { class: "session-name" }, hit.title ? marked(hit.title) : s.title || "Untitled session"),
    ...hit.snippets.map((snippet) => h("span", { class: "snippet", dataset: { message: snippet.message_id } },
      marked(snippet.text)))));
}

// keyFetch: the page's fetch with the API key; current(): the session open now; onClear(): the
// session list is shown again.
export function wireSearch({ keyFetch, current, onClear }) {
  const input = $("#search-input");
  let asked = 0;
  let timer = null;

  function show(items, q) {
    const results = $("#search-results");
    const searching = items !== null;
    results.hidden = !searching;
    $("#session-list").hidden = searching;
    $("#sessions-heading").textContent = searching ? "Search results" : "Sessions";
    if (!searching) {
      onClear();
      return;
    }
    $("#more-sessions").hidden = true;
    results.replaceChildren(...items.map((hit) => hitItem(hit, current())));
    if (!items.length) results.append(h("li", { class: "muted empty-note" }, `No session holds “${q}”.`));
  }

  async function run() {
    clearTimeout(timer);
    const q = input.value.trim();
    const mine = ++asked;
    if (!q) {
      show(null, q);
      return;
    }
    try {
      const page = await keyFetch(`v1/sessions/search?q=${encodeURIComponent(q)}&limit=20`);
      if (mine === asked) show(page.items, q);
    } catch (err) {
      if (mine === asked) reportError(err);
    }
  }

  input.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(run, 250);
  });
  $("#search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    run();
  });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && input.value) {
      input.value = "";
      run();
    }
  });
  $("#search-results").addEventListener("click", (e) => {
    if (e.target.closest("a")) document.body.classList.remove("drawer-open");
  });
  return {
    // After "Forget the API key": nothing of the last search stays on screen.
    reset() {
      input.value = "";
      asked += 1;
      show(null, "");
    },
  };
}
