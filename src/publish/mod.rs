//! Publishing: guest attributes, structured logs (stdout, serial port, Cloud Logging), metrics.

pub mod guest_attributes;
pub mod log;
