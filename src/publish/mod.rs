//! Publishing: guest attributes, structured logs (stdout, serial port, Cloud Logging), metrics.
