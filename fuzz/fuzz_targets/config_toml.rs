//! The TOML config file → `validate_file_text`, and `Settings::resolve` reading it from disk.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use service_proxy_agent::config::{CommonArgs, Settings, validate_file_text};

fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("spa-fuzz-config-{}.toml", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let valid = validate_file_text(text);
    let path = scratch();
    if std::fs::write(path, data).is_err() {
        return;
    }
    let args = CommonArgs {
        config: Some(path.clone()),
        ..CommonArgs::default()
    };
    let resolved = Settings::resolve(&args, |_| None);
    if valid.is_err() {
        assert!(
            resolved.is_err(),
            "invalid file {valid:?} resolved to {resolved:?}"
        );
    }
    // Without an explicit allow (which may be spelt with escapes), only loopback is accepted.
    if let Ok(s) = resolved
        && !text.contains("allow")
        && !text.contains('\\')
    {
        assert!(s.envoy_admin.is_loopback() && s.metrics_addr.is_none_or(|a| a.ip().is_loopback()));
    }
});
