// A minimal frontend on @ai-sdk/react's useChat, pointed at sessiond: the page of the
// Chromium test (tests/test_ai_sdk_browser.py). The session id and its token come in the
// URL's fragment, as a backend that minted them would hand them to the page.
import { useChat } from '@ai-sdk/react';
import { DefaultChatTransport } from 'ai';
import { useEffect, useState } from 'react';
import { createRoot } from 'react-dom/client';

const params = new URLSearchParams(location.hash.slice(1));
const sessionId = params.get('session');
const headers = { Authorization: `Bearer ${params.get('token')}` };

function Chat({ initialMessages }) {
  const { messages, sendMessage, status } = useChat({
    id: sessionId,
    messages: initialMessages,
    resume: true,
    transport: new DefaultChatTransport({ api: '/v1/ai-sdk/chat', headers }),
  });
  const [input, setInput] = useState('');
  const submit = e => {
    e.preventDefault();
    sendMessage({ text: input });
    setInput('');
  };
  return (
    <main data-status={status}>
      <ol id="messages">
        {messages.map(m => (
          <li key={m.id} data-role={m.role} data-id={m.id}>
            {m.parts.map(p => (p.type === 'text' ? p.text : '')).join('')}
          </li>
        ))}
      </ol>
      <form onSubmit={submit}>
        <input id="input" value={input} onChange={e => setInput(e.target.value)} />
        <button id="send" type="submit">Send</button>
      </form>
    </main>
  );
}

function App() {
  const [initial, setInitial] = useState(null);
  useEffect(() => {
    fetch(`/v1/ai-sdk/chat/${sessionId}/messages`, { headers }).then(r => r.json()).then(setInitial);
  }, []);
  return initial === null ? <p id="loading">loading</p> : <Chat initialMessages={initial} />;
}

createRoot(document.getElementById('root')).render(<App />);
