// sessiond's chat page. Plain JavaScript, no build step, no network beyond this server.
//
// How it authenticates is the point of it, since a real frontend does the same:
//   * The API key (asked once, kept in this tab's sessionStorage) is used only to manage sessions
//     (list, create, rename, delete, export) and to mint a session token
//     (POST v1/sessions/{id}/tokens). Nothing calls the API before there is a key.
//   * Everything inside the conversation is sent with that session's access token
//     (Authorization: Bearer ...), and the event stream is an EventSource on
//     v1/sessions/{id}/stream?token=...&last_event_id=N (EventSource cannot send headers).
//   * The access token is refreshed with the refresh token shortly before it expires, and once
//     more on a 401; a refresh token that no longer works falls back to minting a new grant.
//
// How it stays exact across reloads: GET messages shows a running answer with empty content
// (its text lives only in the stream), so after loading history the page opens the stream
// without an id, which starts at the running task's task.started, and rebuilds the answer from
// the deltas. Events are applied once each, by id, so nothing is lost or doubled; reconnections
// resume after the last id seen.

import {
  $, ApiError, announce, fmt, h, humanError, markdownContent, parse, reportError, shortTime, size, toast, when,
} from "./dom.js";
import { openShare, shareFromHash } from "./share.js";
import { wireSearch } from "./search.js";

const KEY_STORE = "sessiond.apiKey";
const TOKEN_STORE = (sid) => `sessiond.tokens.${sid}`;
const EVENT_TYPES = [
  "task.started", "message.delta", "tool.call", "tool.approval_requested", "tool.approval_decided",
  "tool.result", "message.completed",
  "checkpoint.created", "task.completed", "task.failed", "task.cancelled", "task.interrupted",
  "stream.reset",
];
const TERMINAL = new Set(["task.completed", "task.failed", "task.cancelled", "task.interrupted"]);
const STATUS_TEXT = {
  running: "writing…", cancelled: "stopped", failed: "failed", interrupted: "interrupted",
};

// -- the API key: list, create, mint ---------------------------------------------------------

function apiKey() {
  return sessionStorage.getItem(KEY_STORE);
}

async function keyFetch(path, { method = "GET", json } = {}) {
  // Nothing is asked of the server before there is a key to ask with.
  if (!apiKey()) throw new ApiError(401, "No API key: connect first.");
  const headers = { "X-API-Key": apiKey() };
  if (json !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, { method, headers, body: json === undefined ? undefined : JSON.stringify(json) });
  return parse(resp);
}

// -- a session's tokens ----------------------------------------------------------------------

class SessionAuth {
  constructor(sessionId, onChange) {
    this.sessionId = sessionId;
    this.onChange = onChange;
    this.pair = JSON.parse(sessionStorage.getItem(TOKEN_STORE(sessionId)) || "null");
    this.pending = null; // one refresh at a time: two would look like refresh-token reuse
    this.timer = null;
    this.refreshes = 0;
    this.closed = false;
    if (this.pair) this.schedule();
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
  }

  save(pair) {
    this.pair = { ...pair, expires_at: Date.now() + pair.expires_in * 1000 };
    sessionStorage.setItem(TOKEN_STORE(this.sessionId), JSON.stringify(this.pair));
    this.schedule();
    this.onChange(this);
  }

  schedule() {
    clearTimeout(this.timer);
    if (this.closed) return;
    // Renew a little before expiry: a fifth of the lifetime early, at most a minute.
    const lead = Math.min(60_000, this.pair.expires_in * 200);
    const delay = Math.max(0, this.pair.expires_at - lead - Date.now());
    this.timer = setTimeout(() => this.refresh().catch(reportError), delay);
  }

  async mint() {
    this.save(await keyFetch(`v1/sessions/${encodeURIComponent(this.sessionId)}/tokens`, { method: "POST" }));
  }

  refresh() {
    if (!this.pending) this.pending = this.rotate().finally(() => { this.pending = null; });
    return this.pending;
  }

  async rotate() {
    if (this.pair?.refresh_token) {
      const resp = await fetch("v1/tokens/refresh", {
        method: "POST", headers: { Authorization: `Bearer ${this.pair.refresh_token}` },
      });
      if (resp.ok) {
        this.refreshes += 1;
        this.save(await resp.json());
        return;
      }
      // Expired, revoked, or rotated by another holder of a copy: start a new grant.
    }
    await this.mint();
  }

  async accessToken() {
    if (this.pending) await this.pending;
    if (!this.pair || this.pair.expires_at - Date.now() < 5000) await this.refresh();
    return this.pair.access_token;
  }

  // A call in the session, with its access token; on a 401, refresh once and try again.
  async fetch(path, { method = "GET", json, form } = {}) {
    for (let attempt = 0; ; attempt += 1) {
      const token = await this.accessToken();
      const headers = { Authorization: `Bearer ${token}` };
      let body;
      if (json !== undefined) {
        headers["Content-Type"] = "application/json";
        body = JSON.stringify(json);
      } else if (form !== undefined) {
        body = form;
      }
      const resp = await fetch(path, { method, headers, body });
      if (resp.status === 401 && attempt === 0) {
        if (this.pair.access_token === token) await this.refresh();
        continue;
      }
      return parse(resp);
    }
  }
}

// -- the event stream ------------------------------------------------------------------------

class EventStream {
  constructor(chat) {
    this.chat = chat;
    this.source = null;
    this.retryDelay = 500;
    this.timer = null;
    this.closed = false;
  }

  async open() {
    if (this.closed) return;
    const chat = this.chat;
    const params = new URLSearchParams({ token: await chat.auth.accessToken() });
    // No id on the first connection: the stream then starts at the running task's start.
    if (chat.lastEventId !== null) params.set("last_event_id", String(chat.lastEventId));
    if (this.closed) return;
    const source = new EventSource(`v1/sessions/${encodeURIComponent(chat.id)}/stream?${params}`);
    this.source = source;
    let opened = false;
    source.onopen = () => {
      opened = true;
      this.retryDelay = 500;
      chat.setConnection("live");
    };
    for (const type of EVENT_TYPES) source.addEventListener(type, (e) => chat.onEvent(type, e));
    source.onerror = () => {
      if (this.source !== source) return;
      chat.setConnection("reconnecting");
      if (source.readyState !== EventSource.CLOSED) return; // the browser reconnects by itself
      // Refused (a 401 after the token expired, say): renew the token and resume by id.
      source.close();
      clearTimeout(this.timer);
      const delay = this.retryDelay;
      this.retryDelay = Math.min(this.retryDelay * 2, 10_000);
      this.timer = setTimeout(async () => {
        try {
          if (!opened) await chat.auth.refresh();
          await this.open();
        } catch (err) {
          reportError(err);
        }
      }, delay);
    };
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.source) this.source.close();
  }
}

// -- one open session ------------------------------------------------------------------------

class Chat {
  constructor(id, info) {
    this.id = id;
    this.info = info;
    this.auth = new SessionAuth(id, () => renderTokenInfo(this));
    this.stream = new EventStream(this);
    this.messages = []; // the active path, as GET messages gives it
    this.usage = { prompt: 0, completion: 0, total: 0 };
    this.live = new Map(); // reply id -> text rebuilt from message.delta
    this.tools = new Map(); // reply id -> [lines] from tool.call / tool.result
    this.approvals = new Map(); // call id -> {call_id, name, arguments, reply} waiting for a decision
    this.running = null; // {task_id, message_id, reply_id} while a task runs
    this.lastEventId = null;
    this.historySeq = 0;
    this.historyQueued = false;
    this.editing = null; // {id, draft}
    this.busy = false; // an action this tab started is being sent
    this.tasksStarted = 0; // task.started events seen
    this.checkpoints = [];
    this.nodes = new Map();
    this.failures = new Map(); // task id -> why it failed (task.failed / task.interrupted)
    this.draft = null; // the text of a send not yet started: cleared from the box at task.started
    this.closed = false;
  }

  async start() {
    renderTokenInfo(this);
    await this.auth.accessToken();
    await this.loadHistory();
    await this.stream.open();
    this.loadCheckpoints().catch(reportError);
    this.loadDocuments().catch(reportError);
  }

  close() {
    this.closed = true;
    this.stream.close();
    this.auth.close();
  }

  path(suffix = "") {
    return `v1/sessions/${encodeURIComponent(this.id)}${suffix}`;
  }

  // The model of the first answer: a later answer by another one (a fallback) is marked.
  firstModel() {
    return this.messages.find((m) => m.role === "assistant" && m.model)?.model ?? null;
  }

  isRunning() {
    return this.running !== null || this.messages.some((m) => m.status === "running");
  }

  setConnection(state) {
    const el = $("#connection");
    el.dataset.state = state;
    el.textContent = state === "live" ? "Live" : "Reconnecting…";
  }

  // -- history ---------------------------------------------------------------------------

  async loadHistory() {
    const seq = ++this.historySeq;
    const items = [];
    let usage;
    for (;;) {
      const page = await this.auth.fetch(this.path(`/messages?limit=1000&offset=${items.length}&format=html`));
      items.push(...page.items);
      usage = page.usage;
      if (!page.has_more || page.items.length === 0) break;
    }
    if (seq !== this.historySeq || this.closed) return; // a newer load answers instead
    this.messages = items;
    this.usage = usage;
    render();
  }

  // Many events may ask for a refresh at once: one load answers them all.
  refreshHistory() {
    if (this.historyQueued) return;
    this.historyQueued = true;
    queueMicrotask(() => {
      this.historyQueued = false;
      this.loadHistory().catch(reportError);
    });
  }

  find(id) {
    return this.messages.find((m) => m.id === id);
  }

  textOf(message) {
    // A running answer's text lives only in the stream; the rest comes from history.
    if (message.status === "running") return this.live.get(message.id) ?? "";
    return message.content;
  }

  // -- events ----------------------------------------------------------------------------

  onEvent(type, e) {
    if (this.closed) return;
    const id = e.lastEventId === "" ? null : Number(e.lastEventId);
    if (type !== "stream.reset" && id !== null && this.lastEventId !== null && id <= this.lastEventId) {
      return; // seen already (a replay overlapping what arrived live)
    }
    if (id !== null) this.lastEventId = id;
    const data = JSON.parse(e.data);
    switch (type) {
      case "task.started":
        this.running = { task_id: data.task_id, message_id: data.message_id, reply_id: data.reply_id };
        this.tasksStarted += 1;
        this.busy = false; // the request that started it stays open until the end; the stream leads
        this.live.set(data.reply_id, "");
        this.tools.delete(data.reply_id);
        this.approvals.clear();
        if (this.draft !== null) {
          // The send went through: only now may the box forget what was typed.
          const input = $("#composer-input");
          if (input.value.trim() === this.draft) {
            input.value = "";
            autoGrow(input);
          }
          this.draft = null;
        }
        if (!this.find(data.message_id) || !this.find(data.reply_id)) this.refreshHistory();
        render();
        break;
      case "message.delta": {
        this.live.set(data.message_id, (this.live.get(data.message_id) ?? "") + data.delta);
        const message = this.find(data.message_id);
        if (message) updateContent(this, message);
        else this.refreshHistory();
        break;
      }
      case "tool.call":
      case "tool.result": {
        const reply = this.running?.reply_id;
        if (!reply) break;
        const lines = this.tools.get(reply) ?? [];
        lines.push(type === "tool.call"
          ? `Calling ${data.name}…`
          : `${data.is_error ? "Tool error" : "Tool result"}: ${String(data.output).slice(0, 200)}`);
        this.tools.set(reply, lines);
        render();
        break;
      }
      case "tool.approval_requested": {
        const reply = this.running?.reply_id;
        if (!reply) break;
        this.approvals.set(data.call_id, { ...data, reply });
        announce(`The assistant asks to use ${data.name}.`);
        render();
        break;
      }
      case "tool.approval_decided":
        this.approvals.delete(data.call_id);
        render();
        break;
      case "message.completed": {
        const message = this.find(data.message.id);
        if (message) {
          Object.assign(message, {
            content: data.message.content, status: data.message.status,
            usage: data.usage ?? data.message.usage, model: data.model ?? data.message.model,
          });
          render();
        }
        // The rendered Markdown comes with history: one swap from the streamed text to it.
        this.refreshHistory();
        break;
      }
      case "checkpoint.created":
        this.loadCheckpoints().catch(reportError);
        break;
      case "stream.reset":
        // The stream skipped events this page never saw: history is the truth again.
        this.live.clear();
        this.refreshHistory();
        break;
      default:
        if (TERMINAL.has(type)) {
          if (this.running?.task_id === data.task_id) this.running = null;
          this.approvals.clear();
          if (data.error) this.failures.set(data.task_id, data.error);
          if (type === "task.completed") announce("The answer is complete.");
          else if (type === "task.cancelled") announce("The answer was stopped.");
          else announce(`The answer ${type === "task.failed" ? "failed" : "was interrupted"}.`);
          this.refreshHistory();
          render();
          loadSessions().catch(() => {}); // its message count changed
        }
    }
  }

  // -- actions ---------------------------------------------------------------------------

  // Sends that start a task (send, edit, regenerate, restore with a hint) use stream: false, so
  // their request stays open until the answer ends; the page shows the answer from the session
  // stream instead, the same way every other tab of this session sees it.
  async act(fn, { startsTask = false } = {}) {
    const started = this.tasksStarted;
    this.busy = true;
    render();
    try {
      await fn();
    } catch (err) {
      // The connection of a request held open for a whole answer may drop while the answer goes
      // on; once the stream has shown the task starting, there is nothing to report.
      if (!(startsTask && err instanceof TypeError && this.tasksStarted > started)) {
        this.draft = null; // not sent: the text stays in the box
        reportError(err);
      }
    } finally {
      this.busy = false;
      if (!this.closed) render();
    }
  }

  send(content) {
    this.draft = content;
    return this.act(
      () => this.auth.fetch(this.path("/messages"), { method: "POST", json: { content, stream: false } }),
      { startsTask: true },
    );
  }

  decide(callId, approve) {
    const path = this.path(`/tool-calls/${encodeURIComponent(callId)}/${approve ? "approve" : "deny"}`);
    return this.act(() => this.auth.fetch(path, { method: "POST", json: approve ? undefined : {} }));
  }

  cancel() {
    return this.act(() => this.auth.fetch(this.path("/cancel"), { method: "POST" }));
  }

  edit(messageId, content) {
    this.editing = null;
    return this.act(() => this.auth.fetch(this.path(`/messages/${encodeURIComponent(messageId)}/edit`), {
      method: "POST", json: { content, stream: false },
    }), { startsTask: true });
  }

  regenerate(messageId) {
    return this.act(() => this.auth.fetch(this.path(`/messages/${encodeURIComponent(messageId)}/regenerate`), {
      method: "POST", json: { stream: false },
    }), { startsTask: true });
  }

  async loadTree() {
    const tree = await this.auth.fetch(this.path("/tree"));
    this.nodes = new Map(tree.nodes.map((n) => [n.id, n]));
    return tree;
  }

  flip(message, step) {
    return this.act(async () => {
      const tree = await this.loadTree();
      const siblings = message.parent_id === null
        ? tree.nodes.filter((n) => n.parent_id === null).map((n) => n.id)
        : this.nodes.get(message.parent_id).children;
      const target = siblings[siblings.indexOf(message.id) + step];
      if (!target) return;
      const out = await this.auth.fetch(this.path("/navigate"), { method: "POST", json: { message_id: target } });
      this.historySeq += 1; // an older load in flight must not undo this
      this.messages = out.items;
      const shown = out.items.find((m) => m.parent_id === message.parent_id);
      if (shown) announce(`Version ${shown.sibling_index + 1} of ${shown.sibling_count}.`);
      this.refreshHistory();
    });
  }

  async loadCheckpoints() {
    const [list] = await Promise.all([this.auth.fetch(this.path("/checkpoints")), this.loadTree()]);
    if (this.closed) return;
    this.checkpoints = list.items;
    renderCheckpoints(this);
  }

  restore(checkpoint, hint) {
    return this.act(async () => {
      const body = hint ? { hint, stream: false } : {};
      const pending = this.auth.fetch(this.path(`/checkpoints/${encodeURIComponent(checkpoint.id)}/restore`), {
        method: "POST", json: body,
      });
      if (hint) $("#hint").value = "";
      await pending;
      announce("Checkpoint restored.");
      await this.loadHistory();
      await this.loadCheckpoints();
      loadSessions().catch(() => {});
    }, { startsTask: Boolean(hint) });
  }

  async loadDocuments() {
    const list = await this.auth.fetch(this.path("/documents"));
    if (this.closed) return;
    renderDocuments(list.items);
  }

  upload(file) {
    return this.act(async () => {
      const form = new FormData();
      form.append("file", file, file.name);
      const doc = await this.auth.fetch(this.path("/upload"), { method: "POST", form });
      announce(`Uploaded ${doc.name || file.name}: the agent can read it from now on.`);
      await this.loadDocuments();
    });
  }
}

// -- rendering -------------------------------------------------------------------------------

let chat = null;
let sessions = [];

function render() {
  if (!chat) return;
  renderMessages(chat);
  renderUsage(chat);
  renderComposer(chat);
  renderCheckpoints(chat);
}

function renderUsage(c) {
  $("#usage").hidden = false;
  $("#usage-total").textContent = fmt(c.usage.total);
  $("#usage-prompt").textContent = fmt(c.usage.prompt);
  $("#usage-completion").textContent = fmt(c.usage.completion);
}

function renderComposer(c) {
  const running = c.isRunning();
  $("#stop").hidden = !running;
  $("#send").disabled = running || c.busy;
  $("#attach").disabled = c.busy;
  $("#composer").setAttribute("aria-busy", running ? "true" : "false");
}

function renderTokenInfo(c) {
  const el = $("#token-info");
  if (!c?.auth.pair) {
    el.textContent = "No session token yet.";
    return;
  }
  const until = shortTime.format(new Date(c.auth.pair.expires_at));
  const renewed = c.auth.refreshes === 0 ? "not renewed yet"
    : c.auth.refreshes === 1 ? "renewed once" : `renewed ${c.auth.refreshes} times`;
  el.textContent = `Session token valid until ${until} (${renewed}).`;
  el.dataset.refreshes = String(c.auth.refreshes);
}

function contentOf(c, m) {
  if (m.role === "assistant" && m.status !== "running" && typeof m.content_html === "string") {
    return markdownContent(m.content_html);
  }
  return h("div", { class: "content" }, c.textOf(m));
}

function failureNote(c, m) {
  if (m.status !== "failed" && m.status !== "interrupted") return null;
  const reason = c.failures.get(m.task_id);
  const text = reason ? `This answer ${m.status === "failed" ? "failed" : "was interrupted"}: ${reason}`
    : m.status === "failed" ? "This answer failed before it was finished." : "This answer was interrupted (the server stopped).";
  return h("p", { class: "failure", role: "note" }, text);
}

function updateContent(c, message) {
  const li = document.querySelector(`#messages li[data-id="${CSS.escape(message.id)}"]`);
  if (!li) return;
  const content = li.querySelector(".content");
  content.textContent = c.textOf(message);
  keepScrolled();
}

function versionSwitch(c, m, disabled) {
  if (m.sibling_count <= 1) return null;
  const who = m.role === "user" ? "message" : "answer";
  return h("div", { class: "versions", role: "group", "aria-label": `Versions of this ${who}` },
    h("button", {
      type: "button", class: "icon", "aria-label": "Previous version", dataset: { key: `prev-${m.id}` },
      disabled: disabled || m.sibling_index === 0, onclick: () => c.flip(m, -1),
    }, "‹"),
    h("span", { class: "version-label", "aria-label": `Version ${m.sibling_index + 1} of ${m.sibling_count}` },
      `${m.sibling_index + 1}/${m.sibling_count}`),
    h("button", {
      type: "button", class: "icon", "aria-label": "Next version", dataset: { key: `next-${m.id}` },
      disabled: disabled || m.sibling_index >= m.sibling_count - 1, onclick: () => c.flip(m, +1),
    }, "›"));
}

function editForm(c, m) {
  const area = h("textarea", {
    class: "edit-input", rows: "3", "aria-label": "Edit your message",
    oninput: (e) => { c.editing.draft = e.target.value; },
    onkeydown: (e) => {
      if (e.key === "Escape") { c.editing = null; render(); }
    },
  });
  area.value = c.editing.draft;
  queueMicrotask(() => { if (document.activeElement === document.body) area.focus(); });
  return h("form", {
    class: "edit-form",
    onsubmit: (e) => {
      e.preventDefault();
      const content = c.editing.draft.trim();
      if (content) c.edit(m.id, content);
    },
  },
  area,
  h("div", { class: "edit-actions" },
    h("button", { type: "button", class: "ghost", onclick: () => { c.editing = null; render(); } }, "Cancel"),
    h("button", { type: "submit", class: "primary" }, "Save and send")));
}

function messageItem(c, m) {
  const running = c.isRunning();
  const disabled = running || c.busy;
  const isUser = m.role === "user";
  const isHint = isUser && m.hint;
  const editing = c.editing?.id === m.id;
  const status = m.status !== "completed" ? STATUS_TEXT[m.status] ?? m.status : null;
  const actions = [];
  if (isUser && !isHint && !editing) {
    actions.push(h("button", {
      type: "button", class: "ghost small", disabled, dataset: { key: `edit-${m.id}` },
      onclick: () => { c.editing = { id: m.id, draft: m.content }; render(); },
    }, "Edit"));
  }
  if (m.role === "assistant" && m.status !== "running") {
    actions.push(h("button", {
      type: "button", class: "ghost small", disabled, dataset: { key: `regen-${m.id}` },
      onclick: () => c.regenerate(m.id),
    }, "Regenerate"));
  }
  const usage = m.role === "assistant" && m.usage && m.usage.total
    ? h("span", { class: "msg-usage" },
      `${fmt(m.usage.total)} tokens · ${fmt(m.usage.prompt)} prompt + ${fmt(m.usage.completion)} completion`)
    : null;
  const tools = (c.tools.get(m.id) ?? []).map((line) => h("li", {}, line));
  const waiting = [...c.approvals.values()].filter((a) => a.reply === m.id).map((a) =>
    h("div", { class: "approval", role: "group", "aria-label": `Approve ${a.name}?`, dataset: { call: a.call_id } },
      h("span", {}, `Use ${a.name} ${JSON.stringify(a.arguments).slice(0, 200)}?`),
      h("button", { type: "button", class: "small", disabled: c.busy, onclick: () => c.decide(a.call_id, true) },
        "Approve"),
      h("button", { type: "button", class: "ghost small", disabled: c.busy, onclick: () => c.decide(a.call_id, false) },
        "Deny")));
  // Which model wrote it, always: a route that fell back to another model must show it.
  const model = m.role === "assistant" && m.model
    ? h("span", { class: `model${m.model !== c.firstModel() ? " model-other" : ""}`, title: "The model that answered" }, m.model)
    : null;
  return h("li", {
    class: `message ${m.role}${isHint ? " hint" : ""}`,
    dataset: isHint ? { id: m.id, role: m.role, status: m.status, hint: "true" } : { id: m.id, role: m.role, status: m.status },
    "aria-busy": m.status === "running" ? "true" : null,
  },
  h("div", { class: "avatar", "aria-hidden": "true" }, isHint ? "Hint" : isUser ? "You" : "AI"),
  h("article", { class: "bubble", "aria-label": isHint ? "Hint for the answer" : isUser ? "You said" : "Answer" },
    h("header", { class: "msg-head" },
      h("span", { class: "who" }, isHint ? "Hint (from a restore)" : isUser ? "You" : m.role === "assistant" ? "Assistant" : m.role),
      model,
      status ? h("span", { class: `status status-${m.status}` }, status) : null,
      h("time", { datetime: m.created_at, class: "muted" }, shortTime.format(new Date(m.created_at)))),
    tools.length ? h("ul", { class: "tool-lines" }, tools) : null,
    ...waiting,
    editing ? editForm(c, m) : contentOf(c, m),
    failureNote(c, m),
    h("footer", { class: "msg-foot" }, versionSwitch(c, m, disabled), usage, h("span", { class: "spacer" }), actions)));
}

function renderMessages(c) {
  const list = $("#messages");
  const focusKey = document.activeElement?.dataset?.key;
  const nearBottom = isNearBottom();
  list.replaceChildren(...c.messages.filter((m) => m.role !== "system").map((m) => messageItem(c, m)));
  if (focusKey) {
    const again = list.querySelector(`[data-key="${CSS.escape(focusKey)}"]`);
    if (again && !again.disabled) again.focus();
  }
  list.dataset.lastEventId = c.lastEventId ?? "";
  if (nearBottom) keepScrolled(true);
}

function isNearBottom() {
  const s = $("#messages");
  return s.scrollHeight - s.scrollTop - s.clientHeight < 120;
}

function keepScrolled(force = false) {
  const s = $("#messages");
  if (force || isNearBottom()) s.scrollTop = s.scrollHeight;
}

function renderCheckpoints(c) {
  const list = $("#checkpoints");
  const active = c.messages.length ? c.messages[c.messages.length - 1].id : null;
  const disabled = c.isRunning() || c.busy;
  const items = c.checkpoints.map((cp, i) => {
    const node = c.nodes.get(cp.message_id);
    // Named by what it keeps (the start of that answer, its Markdown marks left out), not by
    // its position; the style sheet clamps it to two lines.
    const plain = node ? node.content.replace(/[*_`#>|]+/g, "").replace(/\s+/g, " ").trim() : "";
    const current = cp.message_id === active;
    const name = plain ? (plain.length > 80 ? `${plain.slice(0, 79)}…` : plain) : cp.label || `Checkpoint ${i + 1}`;
    return h("li", { class: `checkpoint${current ? " current" : ""}`, dataset: { id: cp.id } },
      h("div", { class: "cp-text" },
        h("span", { class: "cp-title" },
          h("span", { class: "cp-label" }, name),
          current ? h("span", { class: "badge" }, "current") : null),
        h("time", { datetime: cp.created_at, class: "muted" }, when(cp.created_at)),
      ),
      h("button", {
        type: "button", class: "small", disabled, dataset: { key: `restore-${cp.id}` },
        "aria-label": `Restore checkpoint ${name}`, onclick: () => c.restore(cp, $("#hint").value.trim()),
      }, "Restore"));
  }).reverse();
  list.replaceChildren(...items);
  if (!items.length) list.append(h("li", { class: "muted empty-note" }, "A checkpoint is kept after every answer."));
}

function renderDocuments(docs) {
  const list = $("#documents");
  list.replaceChildren(...docs.map((d) => h("li", { class: "document", dataset: { id: d.id } },
    h("span", { class: "doc-name" }, d.name || d.id),
    h("span", { class: "muted" }, size(d.size || 0)))));
  if (!docs.length) list.append(h("li", { class: "muted empty-note" }, "No documents yet: attach one below the conversation."));
}

function renderSessions() {
  const list = $("#session-list");
  const current = chat?.id;
  list.replaceChildren(...sessions.map((s) => h("li", {},
    h("a", {
      href: `#${encodeURIComponent(s.id)}`, class: "session-link", "aria-current": s.id === current ? "page" : null,
    },
    h("span", { class: "session-name" }, s.title || "Untitled session"),
    h("span", { class: "muted session-sub" }, `${fmt(s.message_count)} messages · ${when(s.last_active_at)}`)))));
  if (!sessions.length) list.append(h("li", { class: "muted empty-note" }, "No sessions yet."));
  $("#more-sessions").hidden = !sessionsCursor || !$("#search-results").hidden;
}

function renderHeader() {
  const info = chat?.info;
  $("#session-title").textContent = chat ? info?.title || "Untitled session" : "No session open";
  $("#session-meta").textContent = chat ? chat.id : "";
  const open = chat !== null;
  $("#session-actions").hidden = !open;
  $("#rename-form").hidden = true;
  $("#session-title").hidden = false;
  $("#empty").hidden = open;
  $("#messages").hidden = !open;
  $("#composer").hidden = !open;
  $(".side").hidden = !open;
  if (!open) $("#usage").hidden = true;
  $("#connection").textContent = "";
}

// -- wiring ----------------------------------------------------------------------------------

const SESSION_PAGE = 100;
let sessionsCursor = null; // the next page of the session list, if there is one

async function loadSessions() {
  const page = await keyFetch(`v1/sessions?limit=${SESSION_PAGE}`);
  // Pages already shown past the first stay: only the first page is asked again.
  const firstIds = new Set(page.items.map((s) => s.id));
  const older = sessions.slice(SESSION_PAGE).filter((s) => !firstIds.has(s.id));
  sessions = [...page.items, ...older];
  if (!older.length) sessionsCursor = page.next_cursor;
  renderSessions();
}

async function moreSessions() {
  if (!sessionsCursor) return;
  const page = await keyFetch(`v1/sessions?limit=${SESSION_PAGE}&cursor=${encodeURIComponent(sessionsCursor)}`);
  const known = new Set(sessions.map((s) => s.id));
  sessions.push(...page.items.filter((s) => !known.has(s.id)));
  sessionsCursor = page.next_cursor;
  renderSessions();
}

// The entry of a session not on the list yet (a link to an older one): its title, with the key.
function refreshSessionEntry(id) {
  if (!apiKey()) return;
  keyFetch(`v1/sessions/${encodeURIComponent(id)}`).then((fresh) => {
    const at = sessions.findIndex((s) => s.id === id);
    if (at >= 0) sessions[at] = fresh;
    else sessions.unshift(fresh);
    if (chat?.id === id) {
      chat.info = fresh;
      $("#session-title").textContent = fresh.title || "Untitled session";
    }
    renderSessions();
  }).catch(() => {});
}

async function loadAgents() {
  const list = await keyFetch("v1/agents");
  const select = $("#new-agent");
  select.replaceChildren(h("option", { value: "" }, "The default agent"),
    ...list.items.map((a) => h("option", { value: a.id }, a.name || a.id)));
}

function download(name, text) {
  const url = URL.createObjectURL(new Blob([text], { type: "application/json" }));
  const a = h("a", { href: url, download: name, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

function clearSessionView() {
  // Nothing of the session before may stay on screen under another one's title.
  $("#share-panel").hidden = true;
  shareShown = null;
  $("#messages").replaceChildren();
  $("#checkpoints").replaceChildren();
  $("#documents").replaceChildren();
  $("#usage").hidden = true;
}

async function openSession(id) {
  if (chat?.id === id) return;
  if (chat) chat.close();
  chat = null;
  clearSessionView();
  if (!id) {
    renderHeader();
    renderTokenInfo(null);
    return;
  }
  const info = sessions.find((s) => s.id === id);
  chat = new Chat(id, info);
  if (!info) refreshSessionEntry(id); // a link to a session not on the list's first page
  renderHeader();
  renderSessions();
  const opened = chat;
  try {
    await opened.start();
  } catch (err) {
    if (chat !== opened) return;
    if (err instanceof ApiError && err.status === 404) {
      toast(`There is no session ${id} (or this key may not see it).`);
      location.hash = "";
      return;
    }
    reportError(err);
  }
  if (chat === opened) $("#composer-input").focus();
}

function sessionFromHash() {
  return decodeURIComponent(location.hash.replace(/^#/, "")) || null;
}

function showConnect(message = "") {
  $("#app").hidden = true;
  $("#shared").hidden = true;
  $("#connect").hidden = false;
  $("#connect-error").textContent = message;
  $("#api-key").focus();
}

async function connect() {
  try {
    await loadSessions();
  } catch (err) {
    if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
      sessionStorage.removeItem(KEY_STORE);
      showConnect("That API key was not accepted.");
      return;
    }
    showConnect(err.message);
    return;
  }
  $("#connect").hidden = true;
  const token = shareFromHash();
  if (token) {
    await openShare(token, shareActions); // connected from a share link: back to it, now with "continue"
    return;
  }
  $("#shared").hidden = true;
  $("#app").hidden = false;
  document.title = "sessiond chat";
  renderHeader();
  loadAgents().catch(() => {}); // a key that may not list agents still chats
  await openSession(sessionFromHash());
}

// What the read-only view of a share link may do with this page (share.js).
const shareActions = {
  signedIn: () => Boolean(apiKey()),
  signIn: () => showConnect(),
  async copy(token) {
    try {
      const copy = await keyFetch(`v1/shares/${encodeURIComponent(token)}/fork`, { method: "POST", json: {} });
      sessions.unshift(copy);
      location.hash = encodeURIComponent(copy.id);
      announce("A copy of the conversation is open: it is yours to continue.");
    } catch (err) {
      reportError(err);
    }
  },
};

// The share link of the session open now, while its panel shows it: {id, url}.
let shareShown = null;
let search = null;

function autoGrow(area) {
  area.style.height = "auto";
  area.style.height = `${Math.min(area.scrollHeight, 240)}px`;
}

function wire() {
  $("#connect-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $("#api-key").value.trim();
    if (!key) {
      $("#connect-error").textContent = "Enter an API key.";
      return;
    }
    sessionStorage.setItem(KEY_STORE, key);
    $("#api-key").value = "";
    connect();
  });

  $("#forget-key").addEventListener("click", () => {
    if (chat) chat.close();
    chat = null;
    for (const k of Object.keys(sessionStorage)) if (k.startsWith("sessiond.")) sessionStorage.removeItem(k);
    sessions = [];
    sessionsCursor = null;
    search.reset();
    clearSessionView();
    renderSessions();
    renderHeader();
    $("#composer-input").value = "";
    showConnect();
  });

  $("#new-session-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const title = $("#new-title").value.trim();
    const body = title ? { title } : {};
    const agent = $("#new-agent").value;
    const systemPrompt = $("#new-system").value.trim();
    if (agent) body.agent_id = agent;
    if (systemPrompt) body.system_prompt = systemPrompt;
    try {
      const created = await keyFetch("v1/sessions", { method: "POST", json: body });
      $("#new-title").value = "";
      $("#new-system").value = "";
      sessions.unshift(created);
      document.body.classList.remove("drawer-open");
      location.hash = encodeURIComponent(created.id);
    } catch (err) {
      reportError(err);
    }
  });

  $("#more-sessions").addEventListener("click", () => moreSessions().catch(reportError));
  $("#drawer-toggle").addEventListener("click", () => document.body.classList.toggle("drawer-open"));
  $("#session-list").addEventListener("click", (e) => {
    if (e.target.closest("a")) document.body.classList.remove("drawer-open");
  });

  $("#rename").addEventListener("click", () => {
    if (!chat) return;
    $("#rename-input").value = chat.info?.title || "";
    $("#session-title").hidden = true;
    $("#rename-form").hidden = false;
    $("#rename-input").focus();
  });
  $("#rename-cancel").addEventListener("click", () => renderHeader());
  $("#rename-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!chat) return;
    const id = chat.id;
    try {
      const fresh = await keyFetch(`v1/sessions/${encodeURIComponent(id)}`, {
        method: "PATCH", json: { title: $("#rename-input").value.trim() || null },
      });
      if (chat?.id === id) chat.info = fresh;
      const at = sessions.findIndex((s) => s.id === id);
      if (at >= 0) sessions[at] = fresh;
      renderHeader();
      renderSessions();
      announce("Session renamed.");
    } catch (err) {
      reportError(err);
    }
  });
  $("#delete-session").addEventListener("click", async () => {
    if (!chat) return;
    const id = chat.id;
    const title = chat.info?.title || "Untitled session";
    if (!window.confirm(`Delete “${title}” and all its messages? This cannot be undone.`)) return;
    try {
      await keyFetch(`v1/sessions/${encodeURIComponent(id)}`, { method: "DELETE" });
      sessions = sessions.filter((s) => s.id !== id);
      sessionStorage.removeItem(TOKEN_STORE(id));
      renderSessions();
      location.hash = "";
      announce("Session deleted.");
    } catch (err) {
      reportError(err);
    }
  });
  $("#export").addEventListener("click", async () => {
    if (!chat) return;
    const id = chat.id;
    try {
      const doc = await keyFetch(`v1/sessions/${encodeURIComponent(id)}/export`);
      download(`${id}.json`, JSON.stringify(doc, null, 2));
    } catch (err) {
      reportError(err);
    }
  });

  window.addEventListener("hashchange", () => {
    const token = shareFromHash();
    if (token) {
      openSession(null).catch(reportError); // no session stays open behind a shared conversation
      openShare(token, shareActions);
      return;
    }
    // Without a key the link waits: connect() opens whatever the address names then.
    if (!apiKey()) {
      if ($("#connect").hidden) showConnect();
      return;
    }
    if ($("#app").hidden) {
      connect(); // from a shared conversation back to the chat
      return;
    }
    openSession(sessionFromHash()).then(() => loadSessions()).catch(reportError);
  });

  search = wireSearch({ keyFetch, current: () => chat?.id ?? null, onClear: renderSessions });

  $("#share").addEventListener("click", async () => {
    if (!chat) return;
    const opened = chat;
    try {
      const made = await opened.auth.fetch(opened.path("/shares"), { method: "POST", json: {} });
      if (chat !== opened) return;
      // The page's own address, whatever proxy or prefix it is served under, with the token.
      const url = new URL(location.href);
      url.hash = `share=${made.token}`;
      shareShown = { id: made.id, url: url.href };
      $("#share-url").value = url.href;
      $("#share-panel").hidden = false;
      $("#share-url").select();
      announce("A read-only link to this conversation was made.");
    } catch (err) {
      reportError(err);
    }
  });
  $("#share-copy").addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText($("#share-url").value);
      $("#share-copy").textContent = "Copied";
    } catch {
      $("#share-copy").textContent = "Copy failed";
    }
    setTimeout(() => { $("#share-copy").textContent = "Copy link"; }, 2000);
  });
  $("#share-revoke").addEventListener("click", async () => {
    if (!chat || !shareShown) return;
    try {
      await chat.auth.fetch(chat.path(`/shares/${encodeURIComponent(shareShown.id)}`), { method: "DELETE" });
      $("#share-panel").hidden = true;
      shareShown = null;
      announce("The link was revoked: it no longer opens the conversation.");
    } catch (err) {
      reportError(err);
    }
  });
  $("#share-close").addEventListener("click", () => {
    $("#share-panel").hidden = true;
    shareShown = null;
  });

  const input = $("#composer-input");
  input.addEventListener("input", () => autoGrow(input));
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $("#composer").requestSubmit();
    }
  });
  $("#composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const content = input.value.trim();
    if (!chat || !content || chat.isRunning() || chat.busy) return;
    // The box keeps the text until the answer has started: a refused send loses nothing.
    chat.send(content).then(() => {
      if (chat) loadSessions().catch(() => {});
    });
  });
  $("#stop").addEventListener("click", () => chat?.cancel());
  $("#attach").addEventListener("click", () => $("#upload-input").click());
  $("#upload-input").addEventListener("change", (e) => {
    const file = e.target.files[0];
    e.target.value = "";
    if (file && chat) chat.upload(file);
  });

  // A tab that was asleep may have missed its refresh timer: renew as soon as it is seen.
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && chat) chat.auth.accessToken().catch(reportError);
  });
}

wire();
if (shareFromHash()) openShare(shareFromHash(), shareActions); // a share link needs no key
else if (apiKey()) connect();
else showConnect();
