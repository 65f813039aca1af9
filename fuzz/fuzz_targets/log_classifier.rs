//! Envoy log bytes, fed in chunks to `EntryAssembler` → `classify` → `LogFindings`.
//!
//! Input: a 4-byte header, then the log. Header byte 0 bit 0 picks the filter (interesting /
//! all); byte 1 the entry cap (0: the default 64 KiB, else n*4 bytes); bytes 2-3 seed the chunk
//! sizes. Checked: the entries and line count do not depend on where the chunks are cut, the
//! buffered bytes stay bounded, and the findings tracker takes whatever the classifier gives.
#![no_main]

#[path = "../harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::log_classifier(data));
