//! Interception: the SERVICE_PROXY_* chains wanted (pure) and applying them (I/O).
