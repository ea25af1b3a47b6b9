// The one error type the SDK reports (events `error` and `closed`, rejected promises).
/**
 * An error of the protocol or of the SDK. `code` is the protocol label (an `ErrorCode` or a
 * `CloseCode` key); `closeCode` is set when the connection closed because of it; `fatal` means
 * the client gave up (no reconnect follows).
 */
export class RtcdError extends Error {
    name = 'RtcdError';
    code;
    closeCode;
    request;
    /** Set by the client when it gives up after this error. */
    fatal;
    constructor(code, message, more = {}) {
        super(message || code, { cause: more.cause });
        this.code = code;
        this.closeCode = more.closeCode;
        this.request = more.request;
        this.fatal = Boolean(more.fatal);
    }
}
/** The text of something thrown (an Error's message, or the value itself). */
export function describe(cause) {
    return cause instanceof Error ? cause.message : String(cause);
}
