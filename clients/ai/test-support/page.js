// The Chromium page of test/browser.test.mjs: the AI SDK's chat over
// NatterChatTransport with the Natter client, bundled by esbuild
// (test-support/bundle.mjs) from their sources. The page keeps the
// chat's messages in localStorage on every change, as an app that
// persists its chat would, so that a reload starts from them.
import { connect } from "natter-client";
import { NatterChatTransport } from "natter-ai";
import { Chat, textOf } from "./chat.mjs";

let client;
let chat;
let pending = Promise.resolve();
const key = (chatId) => `natter-ai-test:${chatId}`;

globalThis.natterAi = {
  /** Connects and makes the chat, with the messages this page saved for chatId. */
  open({ url, user, chatId }) {
    client = connect(url, { user, reconnect: { initialDelayMs: 20, maxDelayMs: 200 } });
    const saved = JSON.parse(localStorage.getItem(key(chatId)) ?? "[]");
    chat = new Chat({
      id: chatId,
      messages: saved,
      transport: new NatterChatTransport({ client }),
      onChange: () => localStorage.setItem(key(chatId), JSON.stringify(chat.messages)),
    });
    return saved.length;
  },
  send(text) {
    pending = chat.sendMessage({ text });
  },
  resume() {
    pending = chat.resumeStream();
  },
  stop() {
    return chat.stop();
  },
  /** Waits for the last send or resume. */
  settled() {
    return pending.then(() => undefined);
  },
  snapshot() {
    return {
      status: chat.status,
      error: chat.error?.message,
      state: client.state,
      messages: chat.messages.map((m) => ({ id: m.id, role: m.role, text: textOf(m) })),
    };
  },
};
