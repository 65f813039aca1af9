//! Thin entry point: everything lives in the library so tests and benches can reach it.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]
fn main() -> std::process::ExitCode {
    service_proxy_agent::cli::main()
}
