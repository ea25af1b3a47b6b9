//! Running a daemon's async entry point from a synchronous `main`, the same way in both
//! daemons: a multi-threaded tokio runtime, and an error printed with the program's name and
//! turned into a failing exit code (no panic, no backtrace for an operator's mistake).

use std::future::Future;
use std::process::ExitCode;

/// Runs `future` to completion; `program` prefixes the error message on stderr.
pub fn run(program: &str, future: impl Future<Output = Result<(), String>>) -> ExitCode {
    run_coded(program, async {
        future.await.map_err(|message| (ExitCode::FAILURE, message))
    })
}

/// [`run`] for an entry point that chooses its exit code on failure (e.g. 64 when a setting
/// turns out wrong only once the daemon talks to another server).
pub fn run_coded(
    program: &str,
    future: impl Future<Output = Result<(), (ExitCode, String)>>,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{program}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(future) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("{program}: {message}");
            code
        }
    }
}

/// Tasks alive on the runtime the caller runs on (`None` outside one). Both daemons export it
/// as a gauge refreshed on every scrape: a count that keeps climbing while sessions come and
/// go is a leak.
pub fn alive_tasks() -> Option<i64> {
    let handle = tokio::runtime::Handle::try_current().ok()?;
    Some(i64::try_from(handle.metrics().num_alive_tasks()).unwrap_or(i64::MAX))
}
