// Type checks (tsc -p test-types): the real natter-client Client (from its
// source) is what NatterChatTransport takes, the transport is the AI SDK's
// ChatTransport for any message type, and its options are as documented.
import { connect, type Client } from "natter-client";
import type { ChatTransport, UIMessage } from "ai";
import { NatterChatTransport, type NatterClientLike } from "natter-ai";

const client: Client = connect("ws://localhost:8080/ws");
const like: NatterClientLike = client;
void like;

const plain: ChatTransport<UIMessage> = new NatterChatTransport({ client });
void plain;

type Custom = UIMessage<{ createdAt: number }, { weather: { city: string } }>;
const custom: ChatTransport<Custom> = new NatterChatTransport<Custom>({ client, sendType: "assistant.ask", resumeType: "assistant.resume", timeoutMs: 30_000 });
void custom;

// @ts-expect-error: the client is required
new NatterChatTransport({});
