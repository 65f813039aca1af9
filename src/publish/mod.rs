//! Publishing: guest attributes, structured logs (stdout, serial port, Cloud Logging), metrics.

pub mod cloud_logging;
pub mod exposition;
pub mod guest_attributes;
pub mod log;
pub mod metrics;
pub mod silenced;
pub mod state_event;
pub mod systemd;
