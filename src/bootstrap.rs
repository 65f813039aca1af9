//! The Envoy bootstrap writer (in progress).
