//! Thin entry point: everything lives in the library so tests and benches can reach it.
#![forbid(unsafe_code)]
fn main() -> std::process::ExitCode {
    service_proxy_agent::cli::main()
}
