//! The rtcd-proxy binary; everything lives in the library (`rtcd_proxy::cli`).
fn main() -> std::process::ExitCode {
    rtcd_proxy::cli::main()
}
