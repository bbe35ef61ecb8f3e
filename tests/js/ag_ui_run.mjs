// Drives sessiond's /v1/ag-ui routes with @ag-ui/client's HttpAgent, unmodified.
// Usage: node ag_ui_run.mjs <scenario> <base url> <thread id> <headers as JSON> [args as JSON]
// Prints one JSON document on stdout for the pytest test to check.
import { HttpAgent } from '@ag-ui/client';
import { randomUUID } from 'node:crypto';

const [scenario, base, threadId, headersJson, argsJson] = process.argv.slice(2);
const headers = JSON.parse(headersJson);
const args = argsJson ? JSON.parse(argsJson) : {};

// Complete SSE frames of a response, as text.
async function* framesOf(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      const parts = buffer.split('\n\n');
      buffer = parts.pop();
      for (const part of parts) yield part;
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

// A fetch for HttpAgent that drops the run's connection after `cutAfter` frames and goes on
// from GET /v1/ag-ui/{thread}/stream with Last-Event-ID: the agent sees one stream.
function resumingFetch(cutAfter, seen) {
  return async (url, init) => {
    const first = new AbortController();
    const response = await fetch(url, { ...init, signal: first.signal });
    if (!response.ok) return response;
    const encoder = new TextEncoder();
    let lastId = null;
    const body = new ReadableStream({
      async start(controller) {
        const emit = frame => {
          const idLine = frame.split('\n').find(line => line.startsWith('id: '));
          if (idLine) lastId = idLine.slice(4);
          seen.push(lastId);
          controller.enqueue(encoder.encode(frame + '\n\n'));
        };
        let n = 0;
        for await (const frame of framesOf(response)) {
          emit(frame);
          if (++n === cutAfter) break;
        }
        first.abort(); // the cut
        seen.push('cut');
        const again = await fetch(`${base}/v1/ag-ui/${threadId}/stream`, {
          headers: { ...headers, 'Last-Event-ID': lastId },
        });
        if (again.status === 200) for await (const frame of framesOf(again)) emit(frame);
        controller.close();
      },
    });
    return new Response(body, { status: response.status, headers: response.headers });
  };
}

async function runOnce(agent) {
  const events = [];
  const errors = [];
  try {
    await agent.runAgent({}, { onEvent: ({ event }) => { events.push(event); } });
  } catch (e) {
    errors.push(String(e.message ?? e));
  }
  return { messages: agent.messages, events, errors };
}

function agentWith(extra = {}) {
  const agent = new HttpAgent({ url: `${base}/v1/ag-ui`, headers, threadId, initialMessages: args.history ?? [],
                                ...extra });
  agent.addMessage({ id: randomUUID(), role: 'user', content: args.text });
  return agent;
}

const scenarios = {
  async run() {
    return runOnce(agentWith());
  },
  async cut() {
    const seen = [];
    const result = await runOnce(agentWith({ fetch: resumingFetch(args.k, seen) }));
    return { ...result, seen };
  },
};

const result = await scenarios[scenario]();
process.stdout.write(JSON.stringify(result));
