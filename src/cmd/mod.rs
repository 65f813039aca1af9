//! The commands, each in its own room: its clap arguments and its handler (the shape of
//! coreos/afterburn's `src/cli/`). `cli.rs` holds only the top-level parser, the dispatch and the
//! exit-code mapping. Clap's types stop here: each room maps its arguments to the library's plain
//! domain types, and no library module imports `cli` or `cmd`.

pub mod common;
pub mod completions;
pub mod doctor;
pub mod envoy_bootstrap;
pub mod fleet;
pub mod intercept;
pub mod report_bootstrap;
pub mod run;
pub mod status;
