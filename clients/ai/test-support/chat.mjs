// The AI SDK's framework-free chat: AbstractChat (what @ai-sdk/react's
// useChat wraps) with the smallest ChatState, messages in a plain array
// replaced on every change, as a framework's state would be. Used by the
// Node tests and, bundled, by the Chromium page.
import { AbstractChat } from "ai";

class State {
  status = "ready";
  error = undefined;
  messages;
  onChange;

  constructor(messages = [], onChange = () => {}) {
    this.messages = messages;
    this.onChange = onChange;
  }

  pushMessage = (message) => {
    this.messages = this.messages.concat(message);
    this.onChange();
  };

  popMessage = () => {
    this.messages = this.messages.slice(0, -1);
    this.onChange();
  };

  replaceMessage = (index, message) => {
    this.messages = [...this.messages.slice(0, index), this.snapshot(message), ...this.messages.slice(index + 1)];
    this.onChange();
  };

  snapshot = (thing) => structuredClone(thing);
}

/** A Chat: new Chat({ transport, id?, messages?, onChange? }) and AbstractChat's API. */
export class Chat extends AbstractChat {
  constructor({ messages, onChange, ...init }) {
    super({ ...init, state: new State(messages, onChange) });
  }
}

/** The text of a message: its text parts concatenated. */
export function textOf(message) {
  return (message?.parts ?? []).filter((p) => p.type === "text").map((p) => p.text).join("");
}
