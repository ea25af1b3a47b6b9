//! The `loadgen` binary; everything lives in the library (`rtcd_loadgen::cli`).
fn main() -> anyhow::Result<()> {
    rtcd_loadgen::cli::main()
}
