//! The global flags: every command takes them (`global = true`), and every one can also come from
//! `SPA_*` environment or the config file. Their help is the CLI surface
//! (docs/contract.md#2-command-line); what they resolve to is `config`'s business.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{
    self, AdminUrl, CloudLoggingMode, CommonArgs, HostPort, InterceptionMode, LogFormat,
    MetricsAddr, PortList, UserSpec, keys,
};

// What the command line and environment gave (clap fills this; `None` = not given).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CommonFlags {
    /// TOML file with the same keys as the flags [default: /etc/service-proxy-agent/config.toml when it exists]
    #[arg(long, global = true, env = "SPA_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[arg(long, help = keys::ENVOY_ADMIN.doc, global = true, env = "SPA_ENVOY_ADMIN", value_name = "URL", value_parser = config::parse_admin_url)]
    pub envoy_admin: Option<AdminUrl>,

    #[arg(long, help = keys::ALLOW_REMOTE_ADMIN.doc, global = true, env = "SPA_ALLOW_REMOTE_ADMIN", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = config::parse_bool)]
    pub allow_remote_admin: Option<bool>,

    #[arg(long, help = keys::ENVOY_LOG_DIR.doc, global = true, env = "SPA_ENVOY_LOG_DIR", value_name = "DIR")]
    pub envoy_log_dir: Option<PathBuf>,

    #[arg(long, help = keys::ENVOY_USER.doc, global = true, env = "SPA_ENVOY_USER", value_name = "NAME|UID", value_parser = config::parse_user)]
    pub envoy_user: Option<UserSpec>,

    #[arg(long, help = keys::INTERCEPTION.doc, global = true, env = "SPA_INTERCEPTION", value_name = "MODE", value_parser = config::parse_enum::<InterceptionMode>)]
    pub interception: Option<InterceptionMode>,

    #[arg(long, help = keys::PROXY_PORT.doc, global = true, env = "SPA_PROXY_PORT", value_name = "N", value_parser = config::parse_port)]
    pub proxy_port: Option<u16>,

    #[arg(long, help = keys::SERVING_PORTS.doc, global = true, env = "SPA_SERVING_PORTS", value_name = "LIST", value_parser = config::parse_port_list_arg)]
    pub serving_ports: Option<PortList>,

    #[arg(long, help = keys::POLL_INTERVAL.doc, global = true, env = "SPA_POLL_INTERVAL", value_name = "DURATION", value_parser = config::parse_duration)]
    pub poll_interval: Option<Duration>,

    #[arg(long, help = keys::HEARTBEAT_INTERVAL.doc, global = true, env = "SPA_HEARTBEAT_INTERVAL", value_name = "DURATION", value_parser = config::parse_duration)]
    pub heartbeat_interval: Option<Duration>,

    #[arg(long, help = keys::FINDING_TTL.doc, global = true, env = "SPA_FINDING_TTL", value_name = "DURATION", value_parser = config::parse_duration)]
    pub finding_ttl: Option<Duration>,

    #[arg(long, help = keys::METRICS_ADDR.doc, global = true, env = "SPA_METRICS_ADDR", value_name = "ADDR", value_parser = config::parse_metrics_addr)]
    pub metrics_addr: Option<MetricsAddr>,

    #[arg(long, help = keys::ALLOW_REMOTE_METRICS.doc, global = true, env = "SPA_ALLOW_REMOTE_METRICS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = config::parse_bool)]
    pub allow_remote_metrics: Option<bool>,

    #[arg(long, help = keys::LOG_FORMAT.doc, global = true, env = "SPA_LOG_FORMAT", value_name = "FORMAT", value_parser = config::parse_enum::<LogFormat>)]
    pub log_format: Option<LogFormat>,

    #[arg(long, help = keys::SERIAL_PORT.doc, global = true, env = "SPA_SERIAL_PORT", value_name = "PATH")]
    pub serial_port: Option<PathBuf>,

    #[arg(long, help = keys::CLOUD_LOGGING.doc, global = true, env = "SPA_CLOUD_LOGGING", value_name = "MODE", value_parser = config::parse_enum::<CloudLoggingMode>)]
    pub cloud_logging: Option<CloudLoggingMode>,

    #[arg(long, help = keys::CLOUD_LOGGING_ENDPOINT.doc, global = true, env = "SPA_CLOUD_LOGGING_ENDPOINT", value_name = "URL", value_parser = config::parse_endpoint)]
    pub cloud_logging_endpoint: Option<String>,

    #[arg(long, help = keys::CONTROL_PLANE.doc, global = true, env = "SPA_CONTROL_PLANE", value_name = "HOST:PORT", value_parser = config::parse_host_port)]
    pub control_plane: Option<HostPort>,

    #[arg(long, help = keys::CLOUD_CHECKS.doc, global = true, env = "SPA_CLOUD_CHECKS", value_name = "on|off", value_parser = config::parse_bool)]
    pub cloud_checks: Option<bool>,

    #[arg(long, help = keys::COMPUTE_ENDPOINT.doc, global = true, env = "SPA_COMPUTE_ENDPOINT", value_name = "URL", value_parser = config::parse_endpoint)]
    pub compute_endpoint: Option<String>,

    #[arg(long, help = keys::TRAFFICDIRECTOR_ENDPOINT.doc, global = true, env = "SPA_TRAFFICDIRECTOR_ENDPOINT", value_name = "URL", value_parser = config::parse_endpoint)]
    pub trafficdirector_endpoint: Option<String>,

    #[arg(long, help = keys::RESOURCEMANAGER_ENDPOINT.doc, global = true, env = "SPA_RESOURCEMANAGER_ENDPOINT", value_name = "URL", value_parser = config::parse_endpoint)]
    pub resourcemanager_endpoint: Option<String>,

    #[arg(long, help = keys::SERVICEUSAGE_ENDPOINT.doc, global = true, env = "SPA_SERVICEUSAGE_ENDPOINT", value_name = "URL", value_parser = config::parse_endpoint)]
    pub serviceusage_endpoint: Option<String>,
}

impl CommonFlags {
    /// The plain values the library resolves (`config::Settings::resolve`).
    pub fn into_args(self) -> CommonArgs {
        let CommonFlags {
            config,
            envoy_admin,
            allow_remote_admin,
            envoy_log_dir,
            envoy_user,
            interception,
            proxy_port,
            serving_ports,
            poll_interval,
            heartbeat_interval,
            finding_ttl,
            metrics_addr,
            allow_remote_metrics,
            log_format,
            serial_port,
            cloud_logging,
            cloud_logging_endpoint,
            control_plane,
            cloud_checks,
            compute_endpoint,
            trafficdirector_endpoint,
            resourcemanager_endpoint,
            serviceusage_endpoint,
        } = self;
        CommonArgs {
            config,
            envoy_admin,
            allow_remote_admin,
            envoy_log_dir,
            envoy_user,
            interception,
            proxy_port,
            serving_ports,
            poll_interval,
            heartbeat_interval,
            finding_ttl,
            metrics_addr,
            allow_remote_metrics,
            log_format,
            serial_port,
            cloud_logging,
            cloud_logging_endpoint,
            control_plane,
            cloud_checks,
            compute_endpoint,
            trafficdirector_endpoint,
            resourcemanager_endpoint,
            serviceusage_endpoint,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Args;

    /// Every global flag but --config is a key of `config::keys::ALL` with its help, in the
    /// table's order, and its `SPA_*` variable is the key's name in upper snake case.
    #[test]
    fn flags_are_the_key_table() {
        let cmd = CommonFlags::augment_args(clap::Command::new("t"));
        let flags: Vec<_> = cmd
            .get_arguments()
            .filter(|a| a.get_id() != "config")
            .collect();
        assert_eq!(flags.len(), keys::ALL.len());
        for (flag, key) in flags.iter().zip(keys::ALL) {
            assert_eq!(flag.get_long(), Some(key.name()));
            assert_eq!(
                flag.get_help().map(|h| h.to_string()).as_deref(),
                Some(key.doc())
            );
            let env = format!("SPA_{}", key.name().to_uppercase().replace('-', "_"));
            assert_eq!(
                flag.get_env().and_then(|e| e.to_str()),
                Some(env.as_str()),
                "{}",
                key.name()
            );
        }
    }

    /// A port list is one flag value, in either separator.
    #[test]
    fn serving_ports_flag_is_one_value() {
        #[derive(clap::Parser)]
        struct T {
            #[command(flatten)]
            c: CommonFlags,
        }
        for (arg, want) in [("80,8080", vec![80, 8080]), ("443;8443", vec![443, 8443])] {
            let t = <T as clap::Parser>::try_parse_from(["t", "--serving-ports", arg]).unwrap();
            assert_eq!(t.c.into_args().serving_ports, Some(PortList(want)));
        }
    }
}
