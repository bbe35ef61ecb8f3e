// What every part of the chat page shares: building elements, formatting, errors in words for
// people, and server-rendered Markdown. Nothing here talks to the server by itself.

export const $ = (sel) => document.querySelector(sel);

// -- small helpers --------------------------------------------------------------------------

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const numberFmt = new Intl.NumberFormat();
export const fmt = (n) => numberFmt.format(n ?? 0);
const timeFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
export const shortTime = new Intl.DateTimeFormat(undefined, { timeStyle: "short" });

export function size(bytes) {
  if (bytes < 1024) return `${fmt(bytes)} bytes`;
  if (bytes < 1024 * 1024) return `${fmt(Math.round(bytes / 1024))} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

export function when(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? "" : timeFmt.format(d);
}

export function toast(message) {
  const el = $("#toast");
  el.textContent = message;
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, 6000);
}

export function announce(message) {
  $("#announcer").textContent = message;
}

export class ApiError extends Error {
  constructor(status, problem) {
    const detail = typeof problem === "object" && problem ? problem.detail || problem.title : problem;
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.code = typeof problem === "object" && problem ? problem.code : undefined;
  }
}

export function mebibytes(bytes) {
  const mib = bytes / 1024 / 1024;
  return mib >= 1 ? `${Number.isInteger(mib) ? mib : mib.toFixed(1)} MiB` : size(bytes);
}

// What went wrong, in words for the person at the keyboard rather than for a developer.
export function humanError(err) {
  if (err instanceof TypeError) {
    return "The server cannot be reached right now (it may be restarting). Nothing typed is lost: try again in a moment.";
  }
  if (!(err instanceof ApiError)) return String(err);
  if (err.status === 413) {
    const limit = /larger than (\d+) bytes/.exec(err.message);
    return limit ? `This message is too long (max ${mebibytes(Number(limit[1]))}).` : "This message is too long.";
  }
  if (err.status === 429) return "Too many requests just now: wait a moment and try again.";
  if (err.status === 409 && err.code === "task_running") return "An answer is still being written: wait for it or stop it.";
  if (err.status === 503) return "The server is busy or restarting: try again in a moment.";
  if (err.status >= 500) return "The server could not do that (an internal error). Try again in a moment.";
  return err.message;
}

export async function parse(resp) {
  if (resp.status === 204) return null;
  const type = resp.headers.get("Content-Type") || "";
  const body = type.includes("json") ? await resp.json() : await resp.text();
  if (!resp.ok) throw new ApiError(resp.status, body);
  return body;
}

export function reportError(err) {
  if (err instanceof ApiError || err instanceof TypeError) toast(humanError(err));
  else throw err;
}

// Server-rendered, sanitized Markdown (GET messages?format=html), with a copy button per code block.
export function markdownContent(html) {
  const div = h("div", { class: "content markdown" });
  div.innerHTML = html;
  for (const pre of div.querySelectorAll("pre")) {
    const code = pre.querySelector("code") ?? pre;
    const button = h("button", { type: "button", class: "copy ghost small", "aria-label": "Copy the code" }, "Copy");
    button.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(code.textContent);
        button.textContent = "Copied";
      } catch {
        button.textContent = "Copy failed";
      }
      setTimeout(() => { button.textContent = "Copy"; }, 2000);
    });
    pre.before(h("div", { class: "code-bar" }, button));
  }
  return div;
}

