// Type declarations for ssegate's browser client, served at /_ssegate/client.d.ts.

/** Options of {@link SsegateSource}. */
export interface SsegateSourceInit {
  /** Topics (or patterns ending in `/*`) to follow, each sent as `topic=`. */
  topics?: string[];
  /** Only these event types (`type=a,b`); untyped events count as `message`. */
  types?: string[];
  /** Send cookies on a cross-origin request (as EventSource's option). */
  withCredentials?: boolean;
  /**
   * A token for `auth.mode: jwt`, sent as `access_token=`. A function is called before
   * every connection (after `ssegate.expired`, and once more after a 401), so it can
   * return a fresh token.
   */
  token?: string | (() => string | Promise<string>);
  /** Where the first connection resumes (an id rendered into the page). */
  lastEventId?: string;
  /** Longest wait between two attempts, in ms. Default 30000. */
  maxRetryDelay?: number;
  /** A connection silent for this long (ms) is dropped and resumed. Default 45000; 0: never. */
  heartbeatTimeout?: number;
}

/** The `error` event: the connection was lost (or refused). */
export interface SsegateErrorEvent extends Event {
  /** The HTTP status, when the server answered something other than a stream. */
  readonly status?: number;
  /** Milliseconds until the next attempt; absent when the source is now closed. */
  readonly retryIn?: number;
  /** The underlying error (network failure, abort), if any. */
  readonly cause?: unknown;
}

/** The events a {@link SsegateSource} dispatches, by type. Any published type also arrives. */
export interface SsegateSourceEventMap {
  open: Event;
  message: MessageEvent<string>;
  error: SsegateErrorEvent;
  /** `data`: `{"last_event_id": "…", "oldest_available": "…"}`: events were missed. */
  'ssegate.gap': MessageEvent<string>;
  /** `data`: `{"retry_ms": N}`: the server is stopping; the source reconnects after N ms. */
  'ssegate.shutdown': MessageEvent<string>;
  /** The token expired; the source reconnects at once, calling `token()`. */
  'ssegate.expired': MessageEvent<string>;
  /** `data`: `{"topic": "…"}`: the topic was deleted. The source reconnects unless closed. */
  'ssegate.closed': MessageEvent<string>;
  /** `data`: `{"dropped": N}`: N events were dropped for this slow client. */
  'ssegate.overflow': MessageEvent<string>;
  /** The token's subject was revoked. */
  'ssegate.revoked': MessageEvent<string>;
}

/** A streaming `text/event-stream` parser, as the HTML standard defines it. */
export declare class SseParser {
  constructor(
    onEvent: (type: string, data: string, lastEventId: string) => void,
    onRetry?: (ms: number) => void,
  );
  /** The last event ID buffer, kept across events and `reset()`. */
  lastEventId: string;
  /** Forgets a partial line or event (a new connection). */
  reset(): void;
  /** Parses the next chunk of decoded text. */
  feed(chunk: string): void;
}

/**
 * An EventSource for ssegate streams that resumes from the last id across its own
 * reconnects, backs off with jitter (honouring `Retry-After`), and handles ssegate's own
 * events.
 */
export declare class SsegateSource extends EventTarget {
  constructor(url: string | URL, init?: SsegateSourceInit);

  static readonly CONNECTING: 0;
  static readonly OPEN: 1;
  static readonly CLOSED: 2;
  readonly CONNECTING: 0;
  readonly OPEN: 1;
  readonly CLOSED: 2;

  /** The events URL as given, made absolute. */
  readonly url: string;
  readonly withCredentials: boolean;
  readonly readyState: 0 | 1 | 2;
  /** The id of the last event received; the next connection resumes after it. */
  readonly lastEventId: string;

  onopen: ((this: SsegateSource, ev: Event) => unknown) | null;
  onmessage: ((this: SsegateSource, ev: MessageEvent<string>) => unknown) | null;
  onerror: ((this: SsegateSource, ev: SsegateErrorEvent) => unknown) | null;
  /** Events were missed (the history no longer reaches back): refetch the page's state. */
  ongap: ((this: SsegateSource, ev: MessageEvent<string>) => unknown) | null;

  /** Closes the stream for good. */
  close(): void;
  /** Drops the connection and reconnects after `delay` ms (default 0), resuming. */
  reconnect(delay?: number): void;

  addEventListener<K extends keyof SsegateSourceEventMap>(
    type: K,
    listener: (this: SsegateSource, ev: SsegateSourceEventMap[K]) => unknown,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: (this: SsegateSource, ev: MessageEvent<string>) => unknown,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof SsegateSourceEventMap>(
    type: K,
    listener: (this: SsegateSource, ev: SsegateSourceEventMap[K]) => unknown,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: (this: SsegateSource, ev: MessageEvent<string>) => unknown,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}

type SsegateSourceClass = typeof SsegateSource;

declare global {
  /** Set when client.js is loaded, for scripts that do not import it. */
  var SsegateSource: SsegateSourceClass;
}

export default SsegateSource;
