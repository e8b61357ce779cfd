// Types for Herald's JavaScript client (herald.js, served at /v1/client.js).

export const VERSION: string;

/** An event as Herald delivers it (the envelope). */
export interface HeraldEvent<T = unknown> {
  seq: number;
  channel: string;
  type?: string;
  data: T;
  /** RFC 3339 with milliseconds. */
  time: string;
  id?: string;
}

export interface Member {
  user: string;
  info: Record<string, unknown> | null;
  connections?: number;
}

/** "connected" means a stream is open (a welcomed WebSocket, or an open event stream). */
export type State = "connecting" | "connected" | "disconnected";

export interface ConnectOptions {
  /** A token (JWT) for `?token=`/`Authorization`. */
  token?: string;
  /** Called for a token at start, before the current one expires, and when one is refused. */
  getToken?: () => Promise<string>;
  /** "auto" (default): WebSocket, falling back to SSE when it cannot open. */
  transport?: "auto" | "ws" | "sse";
  /** After falling back, try WebSocket again this much later (default 30000). */
  retryWebSocketMs?: number;
  /** How long a publish waits and retries (same id) while no connection takes it before it
   * rejects with code "publish_timeout" (default 30000). */
  publishTimeoutMs?: number;
  /** A page on another origin (listed in Herald's server.allowed_origins) sends its cookies,
   * for Herald's backend hooks to ask the app who it is. */
  withCredentials?: boolean;
  /** Implementations for runtimes without globals (older Node). */
  WebSocket?: unknown;
  EventSource?: unknown;
  fetch?: typeof fetch;
}

export interface SubscribeOptions {
  /** Resume after this seq (history first, then live). Without it: live from now. */
  since?: number;
  /** Be a presence member (exact channels only). */
  presence?: boolean;
  /** The member's user and info (open mode or API keys; a token says its own). */
  user?: string;
  info?: Record<string, unknown>;
  /** Retention dropped events after the cursor; delivery goes on from `oldest`. */
  onReset?: (oldest: number) => void;
  onJoin?: (member: Member) => void;
  onLeave?: (member: Member) => void;
  onPresence?: (state: { count: number; members: Member[] }) => void;
}

export interface Subscription {
  readonly channel: string;
  /** The last seq delivered (the resume cursor). */
  readonly lastSeq: number | null;
  /** Presence members this subscription knows of, by user. */
  readonly members: Map<string, Member>;
  readonly count: number;
  unsubscribe(): void;
}

export interface PublishOptions {
  type?: string;
  /** Idempotency id; one is generated when absent. */
  id?: string;
}

export interface Client {
  readonly state: State;
  on(event: "state", fn: (state: State) => void): () => void;
  on(event: "connecting" | "connected" | "disconnected" | "fallback", fn: () => void): () => void;
  /** Errors carry Herald's `code` (and `status` for an HTTP refusal): a stream refused
   * before opening is probed with fetch, so a 401 or 403 is told as such. */
  on(event: "error", fn: (error: Error & { code?: string; status?: number }) => void): () => void;
  subscribe<T = unknown>(channel: string, onEvent: (event: HeraldEvent<T>) => void): Subscription;
  subscribe<T = unknown>(channel: string, options: SubscribeOptions, onEvent: (event: HeraldEvent<T>) => void): Subscription;
  /** Resolves to the seq once the event is durable. */
  publish(channel: string, data: unknown, options?: PublishOptions): Promise<number>;
  /** Asks the app behind Herald (`proxy.rpc_url`) over the WebSocket; resolves to its answer,
   * rejects with Herald's code (`proxy_refused`, `proxy_unavailable`, `not_connected`). */
  rpc<T = unknown>(method: string, data?: unknown): Promise<T>;
  /** Pages of history, oldest first. */
  history(channel: string, options?: { after?: number; limit?: number }): AsyncIterable<HeraldEvent[]>;
  /** Closes sockets, streams and timers. */
  close(): void;
}

export function connect(url?: string, options?: ConnectOptions): Client;

/** Herald's channel pattern match (`*` is the only wildcard). */
export function matches(pattern: string, channel: string): boolean;
