//! The rtcd binary: everything lives in the library (see `rtcd::cli`) so tests can run it too.
fn main() -> std::process::ExitCode {
    rtcd::cli::main()
}
