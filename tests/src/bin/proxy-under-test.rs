//! The rtcd-proxy CLI linked into the e2e crate, so benchmarks can run it as a separate
//! process (`CARGO_BIN_EXE_*` exists only for binaries of the bench's own package).
fn main() -> std::process::ExitCode {
    rtcd_proxy::cli::main()
}
