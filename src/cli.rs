//! The command line (SPEC §1), as clap derive types only.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Version line: crate version, git commit, and the kind of build when it is not a plain one
/// (", profile-guided": `scripts/build-pgo.sh`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("RAMPART_GIT_COMMIT"),
    env!("RAMPART_BUILD_KIND"),
    ")"
);

/// rampart: a sidecar reverse proxy with per-tenant rate limits, circuit breakers, timeouts,
/// retries and load shedding, configured by one YAML policy file.
#[derive(Debug, Parser)]
#[command(name = "rampart", version = VERSION, about)]
pub struct Cli {
    /// Log format; json by default when stdout is not a terminal.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar.
    Run {
        /// The policy file.
        #[arg(long, env = "RAMPART_CONFIG")]
        config: PathBuf,
        /// Reload when the file changes (ConfigMap symlink swaps included), or any certificate,
        /// key or CA file it names (looked at once a second).
        #[arg(long)]
        watch: bool,
    },
    /// Parse and check a policy file; never starts listeners.
    Validate {
        /// The policy file.
        #[arg(long, env = "RAMPART_CONFIG")]
        config: PathBuf,
    },
    /// Run the shipped demo policy in front of the built-in sample service.
    Demo {
        /// The demo policy; the shipped one if absent.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Serve the built-in sample upstream alone (for benchmarks and experiments).
    Sample {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: SocketAddr,
    },
    /// Probe a running rampart's admin listener once: exit 0 on a 200, else 1 (for container
    /// health checks in images without a shell).
    Health {
        /// Admin address to probe; default: the policy file's `admin.listen` when a file is
        /// named, else 127.0.0.1:9901. `0.0.0.0`/`::` are probed on loopback.
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// The policy file to take `admin.listen` from (that key alone is read; a file that
        /// cannot be read, or holds more than one YAML document, leaves 127.0.0.1:9901, with a
        /// warning).
        #[arg(long, env = "RAMPART_CONFIG")]
        config: Option<PathBuf>,
        /// Admin path to ask for: /healthz (serving) or /readyz (ready for traffic).
        #[arg(long, default_value = "/healthz")]
        path: String,
        /// The whole run's budget (reading the file, connect, send, status line), e.g. 2s or
        /// 500ms.
        #[arg(long, default_value = "2s", value_parser = positive_duration)]
        timeout: crate::config::Dur,
    },
    /// Work with the audit trail of policy changes (SPEC §11).
    Audit {
        /// What to do with it.
        #[command(subcommand)]
        action: AuditCommand,
    },
}

/// `rampart audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain: exit 0 with the number of entries and the head, or 1 naming the
    /// first broken line (or the head or count that differs from the one expected).
    Verify {
        /// The audit file. Repeat it, oldest first, to check files of one trail (a rotated
        /// file, then the one after it) as one sequence.
        #[arg(long, required = true)]
        file: Vec<PathBuf>,
        /// The sha256 the last line must have: the `head` recorded from `/state` or the
        /// "audit entry written" log line. Catches entries cut from the end, which the chain
        /// alone cannot show.
        #[arg(long, value_name = "SHA256")]
        expect_head: Option<String>,
        /// The number of entries there must be (the last file's, as `/state` counts them).
        #[arg(long, value_name = "N")]
        expect_count: Option<u64>,
    },
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A duration for a flag that must be longer than zero (`0s` would make the probe fail as if
/// nothing answered).
fn positive_duration(s: &str) -> Result<crate::config::Dur, String> {
    let d: crate::config::Dur = s.parse().map_err(|e| format!("{e}"))?;
    if d.0.is_zero() {
        return Err("must be longer than 0s".into());
    }
    Ok(d)
}
