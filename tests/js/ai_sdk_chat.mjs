// Drives sessiond's /v1/ai-sdk routes with the `ai` package's own client, unmodified.
// Usage: node ai_sdk_chat.mjs <scenario> <base url> <session id> <headers as JSON> [args as JSON]
// Prints one JSON document on stdout for the pytest test to check.
import { DefaultChatTransport, readUIMessageStream } from 'ai';

const [scenario, base, chatId, headersJson, argsJson] = process.argv.slice(2);
const headers = JSON.parse(headersJson);
const args = argsJson ? JSON.parse(argsJson) : {};
const transport = new DefaultChatTransport({ api: `${base}/v1/ai-sdk/chat`, headers });

const userMessage = (id, text) => ({ id, role: 'user', parts: [{ type: 'text', text }] });

async function lastMessage(stream) {
  let last = null;
  const errors = [];
  for await (const message of readUIMessageStream({ stream, onError: e => errors.push(String(e)) })) {
    last = message;
  }
  return { message: last, errors };
}

async function send(messages, trigger = 'submit-message', messageId = undefined, abortSignal = undefined) {
  return transport.sendMessages({ chatId, messages, trigger, messageId, abortSignal });
}

const scenarios = {
  // One message, the whole answer.
  async send() {
    // With args.messageId: sendMessage({text, messageId}), an edit of that message.
    const messages = [...(args.history ?? []), userMessage(args.id ?? 'client-1', args.text)];
    return lastMessage(await send(messages, 'submit-message', args.messageId));
  },
  // Regenerate the assistant message args.messageId (the list is cut before it, as useChat does).
  async regenerate() {
    return lastMessage(await send(args.history, 'regenerate-message', args.messageId));
  },
  // Read `k` chunks, drop the connection, then resume as useChat({resume: true}) does on mount.
  async cut() {
    const abort = new AbortController();
    const stream = await send([userMessage('client-1', args.text)], 'submit-message', undefined, abort.signal);
    const reader = stream.getReader();
    const before = [];
    while (before.length < args.k) {
      const { value, done } = await reader.read();
      if (done) break;
      before.push(value);
    }
    abort.abort();
    reader.releaseLock();
    const resumed = await transport.reconnectToStream({ chatId });
    if (resumed === null) return { before, resumed: null };
    return { before, ...(await lastMessage(resumed)) };
  },
  // What useChat does on mount when nothing runs.
  async reconnect() {
    const resumed = await transport.reconnectToStream({ chatId });
    return resumed === null ? { resumed: null } : await lastMessage(resumed);
  },
  // A request the server refuses: the transport's error.
  async refused() {
    try {
      await send(args.messages ?? [userMessage('client-1', 'hello')], args.trigger ?? 'submit-message');
      return { error: null };
    } catch (e) {
      return { error: String(e.message ?? e) };
    }
  },
};

const result = await scenarios[scenario]();
process.stdout.write(JSON.stringify(result));
