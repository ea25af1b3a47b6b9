import type { RtcdErrorCode } from './protocol.js';
/** What an `RtcdError` may carry besides its code and message. */
export interface RtcdErrorDetails {
    /** The WebSocket close code, when the connection closed because of this error. */
    closeCode?: number;
    /** The client message type the proxy answered (`error.request`). */
    request?: string;
    /** The client gave up: no reconnect follows. */
    fatal?: boolean;
    cause?: unknown;
}
/**
 * An error of the protocol or of the SDK. `code` is the protocol label (an `ErrorCode` or a
 * `CloseCode` key); `closeCode` is set when the connection closed because of it; `fatal` means
 * the client gave up (no reconnect follows).
 */
export declare class RtcdError extends Error {
    readonly name = "RtcdError";
    readonly code: RtcdErrorCode;
    readonly closeCode: number | undefined;
    readonly request: string | undefined;
    /** Set by the client when it gives up after this error. */
    fatal: boolean;
    constructor(code: RtcdErrorCode, message?: string, more?: RtcdErrorDetails);
}
/** The text of something thrown (an Error's message, or the value itself). */
export declare function describe(cause: unknown): string;
