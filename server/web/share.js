// A shared conversation, read-only: what a share link (#share=TOKEN) shows to anyone.
//
// The link's token is the only credential: the conversation is fetched with no API key and no
// session token (GET v1/shares/TOKEN), and nothing on this view can change it: no message box,
// no edit, no regenerate, no versions. The answers' Markdown is the server's, sanitized
// (?format=html), as in the chat. A visitor who has connected with an API key may continue the
// conversation as a copy of their own (POST v1/shares/TOKEN/fork); one who has not is offered to.

import { $, ApiError, h, humanError, markdownContent, parse, shortTime, when } from "./dom.js";

const TOKEN = /^#share=(sh_[A-Za-z0-9_-]{1,100})$/;

export function shareFromHash() {
  return TOKEN.exec(location.hash)?.[1] ?? null;
}

const STATUS_TEXT = { running: "being written", cancelled: "stopped", failed: "failed", interrupted: "interrupted" };

function sharedItem(m) {
  const isUser = m.role === "user";
  const who = m.hint ? "Hint (from a restore)" : isUser ? "User" : "Assistant";
  const status = m.status !== "completed" ? STATUS_TEXT[m.status] ?? m.status : null;
  const content = !isUser && typeof m.content_html === "string"
    ? markdownContent(m.content_html)
    : h("div", { class: "content" }, m.content);
  return h("li", { class: `message ${m.role}${m.hint ? " hint" : ""}`, dataset: { id: m.id, role: m.role, status: m.status } },
    h("div", { class: "avatar", "aria-hidden": "true" }, m.hint ? "Hint" : isUser ? "User" : "AI"),
    h("article", { class: "bubble", "aria-label": who },
      h("header", { class: "msg-head" },
        h("span", { class: "who" }, who),
        status ? h("span", { class: `status status-${m.status}` }, status) : null,
        h("time", { datetime: m.created_at, class: "muted" }, shortTime.format(new Date(m.created_at)))),
      content));
}

// actions: { signedIn(): boolean, signIn(): void, copy(token): Promise<void> }
export async function openShare(token, actions) {
  $("#connect").hidden = true;
  $("#app").hidden = true;
  $("#shared").hidden = false;
  $("#shared-title").textContent = "Shared conversation";
  $("#shared-meta").textContent = "Loading…";
  $("#shared-messages").replaceChildren();
  $("#shared-actions").replaceChildren();
  let conv;
  try {
    const resp = await fetch(`v1/shares/${encodeURIComponent(token)}?format=html`, { credentials: "omit" });
    conv = await parse(resp);
  } catch (err) {
    if (shareFromHash() !== token) return;
    $("#shared-meta").textContent = err instanceof ApiError && err.status === 404
      ? "This link does not work: it may have expired or been revoked."
      : humanError(err);
    return;
  }
  if (shareFromHash() !== token) return; // the address moved on meanwhile
  document.title = `${conv.title || "Shared conversation"} · sessiond`;
  $("#shared-title").textContent = conv.title || "Untitled conversation";
  const until = conv.expires_at ? `, until ${when(conv.expires_at)}` : "";
  $("#shared-meta").textContent = `Shared conversation, read-only · shared ${when(conv.shared_at)}${until}`;
  const list = $("#shared-messages");
  list.replaceChildren(...conv.messages.map(sharedItem));
  if (!conv.messages.length) list.append(h("li", { class: "muted empty-note" }, "This conversation has no messages."));
  renderActions(token, actions);
}

function renderActions(token, actions) {
  const bar = $("#shared-actions");
  if (!actions.signedIn()) {
    bar.replaceChildren(
      h("p", { class: "note" }, "Connect with an API key to continue this conversation as a copy of your own."),
      h("button", { type: "button", class: "ghost", onclick: () => actions.signIn() }, "Connect to continue"));
    return;
  }
  const button = h("button", { type: "button", class: "primary", id: "continue-copy" }, "Continue as a copy");
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await actions.copy(token);
    } finally {
      button.disabled = false;
    }
  });
  bar.replaceChildren(
    h("p", { class: "note" }, "A copy is a session of your own with these messages; this conversation stays as it is."),
    button,
    h("a", { href: "#", class: "ghost-link" }, "My sessions"));
}
