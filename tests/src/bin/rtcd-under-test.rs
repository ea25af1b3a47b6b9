fn main() -> std::process::ExitCode {
    rtcd::cli::main()
}
