use std::{net::SocketAddr, time::Duration};

use lookout_bus::{BusConfig, Compression, KafkaOpt};
use lookout_telemetry::LogFormat;
use tracing::level_filters::LevelFilter;

/// Options every Lookout service takes. Each is also an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Kafka bootstrap servers, host:port[,host:port…]. `lookout broker` serves an embedded one
    /// on 127.0.0.1:9092.
    #[arg(long, env = "LOOKOUT_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,

    /// Extra librdkafka property, key=value (repeatable; in the environment, comma-separated).
    /// For SASL/TLS, e.g. security.protocol=SASL_SSL.
    #[arg(
        long = "kafka-opt",
        env = "LOOKOUT_KAFKA_OPTS",
        value_delimiter = ',',
        value_name = "KEY=VALUE"
    )]
    pub kafka_opts: Vec<KafkaOpt>,

    /// Prefix for every topic name, e.g. `staging.`.
    #[arg(long, env = "LOOKOUT_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,

    /// Producer compression: none, lz4 or zstd.
    #[arg(long, env = "LOOKOUT_COMPRESSION", default_value = "lz4")]
    pub compression: Compression,

    /// This replica's name in headers and logs [default: hostname-pid].
    #[arg(long, env = "LOOKOUT_INSTANCE", default_value_t = lookout_bus::default_instance(), hide_default_value = true)]
    pub instance: String,

    /// Address of the admin HTTP server (/livez, /readyz, /metrics); port 0 picks a free one.
    #[arg(long, env = "LOOKOUT_ADMIN_ADDR", default_value = "127.0.0.1:0")]
    pub admin_addr: SocketAddr,

    /// Log format on stderr.
    #[arg(long, env = "LOOKOUT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,

    /// Do not publish this service's logs on the logs topic (stderr is unaffected).
    #[arg(long, env = "LOOKOUT_NO_SHIP_LOGS")]
    pub no_ship_logs: bool,

    /// Lowest level of the events published on the logs topic: trace, debug, info, warn, error
    /// or off. Independent of RUST_LOG, which filters stderr.
    #[arg(long, env = "LOOKOUT_SHIP_LOGS_LEVEL", default_value = "info", value_name = "LEVEL")]
    pub ship_logs_level: LevelFilter,

    /// How long to wait for work in progress after SIGINT/SIGTERM (a second signal exits at once).
    #[arg(long, env = "LOOKOUT_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

impl CommonArgs {
    /// The bus configuration for `service`.
    pub fn bus_config(&self, service: &str) -> BusConfig {
        BusConfig {
            brokers: self.brokers.clone(),
            kafka_opts: self.kafka_opts.clone(),
            topic_prefix: self.topic_prefix.clone(),
            service: service.to_owned(),
            instance: self.instance.clone(),
            compression: self.compression,
        }
    }
}

/// Parses `250ms`, `10s`, `2m`, `1h`, `7d` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 =
        num.parse().map_err(|_| format!("{s:?} is not a duration like 500ms, 10s or 2m"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        u => return Err(format!("unknown unit {u:?} in {s:?}: use ms, s, m, h or d")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

/// Parses `1048576`, `512k`, `100M`, `1G` (also `100MiB`, `100MB`): powers of 1024.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size like 100M"))?;
    let unit = unit.trim().trim_end_matches(['B', 'b']).trim_end_matches('i');
    let factor: u64 = match unit {
        "" => 1,
        "k" | "K" => 1 << 10,
        "m" | "M" => 1 << 20,
        "g" | "G" => 1 << 30,
        _ => return Err(format!("unknown unit in {s:?}: use k, M or G")),
    };
    match n.checked_mul(factor) {
        Some(0) | None => Err(format!("{s:?}: the size must be between 1 byte and 16 EiB")),
        Some(bytes) => Ok(bytes),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        common: CommonArgs,
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn kafka_opts_and_durations_parse() {
        let cli = Cli::try_parse_from([
            "x",
            "--kafka-opt",
            "security.protocol=SASL_SSL",
            "--kafka-opt",
            "sasl.mechanism=PLAIN",
            "--shutdown-grace",
            "250ms",
        ])
        .unwrap();
        assert_eq!(cli.common.kafka_opts.len(), 2);
        assert_eq!(cli.common.shutdown_grace, Duration::from_millis(250));
        let cfg = cli.common.bus_config("svc");
        assert_eq!(cfg.service, "svc");
        assert!(Cli::try_parse_from(["x", "--kafka-opt", "nonsense"]).is_err());
        assert!(!cli.common.no_ship_logs, "logs are shipped by default");
        assert_eq!(cli.common.ship_logs_level, LevelFilter::INFO);
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_bytes("100M"), Ok(100 << 20));
        assert_eq!(parse_bytes("512k"), Ok(512 << 10));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        for bad in ["", "M", "0", "12 parsecs", "-1"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert!(parse_duration("2 fortnights").is_err());
    }

    #[test]
    fn log_shipping_options_parse() {
        let cli =
            Cli::try_parse_from(["x", "--no-ship-logs", "--ship-logs-level", "debug"]).unwrap();
        assert!(cli.common.no_ship_logs);
        assert_eq!(cli.common.ship_logs_level, LevelFilter::DEBUG);
        let cli = Cli::try_parse_from(["x", "--ship-logs-level", "off"]).unwrap();
        assert_eq!(cli.common.ship_logs_level, LevelFilter::OFF);
        assert!(Cli::try_parse_from(["x", "--ship-logs-level", "loud"]).is_err());
    }
}
