//! The daemon loop (in progress).
