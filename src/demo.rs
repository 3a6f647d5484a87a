//! `rampart demo`: the shipped demo policy in front of the built-in sample service.
//!
//! Starts two sample endpoints (127.0.0.1:3000 and :3001), runs `config/demo.yaml` (built into
//! the binary, so the command works from any directory), prints what to curl to see each
//! policy act, and runs until Ctrl-C.

use std::path::PathBuf;

use crate::config::Config;
use crate::sample::Sample;

/// The shipped demo policy.
pub const DEMO_YAML: &str = include_str!("../config/demo.yaml");

/// Runs the demo until SIGINT/SIGTERM.
pub async fn run(path: Option<PathBuf>) -> Result<(), String> {
    let config = match &path {
        Some(p) => Config::load(p),
        None => Config::from_str(DEMO_YAML, "config/demo.yaml"),
    }
    .map_err(|e| e.to_string())?;
    let mut samples = Vec::new();
    for port in [3000u16, 3001] {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let s = Sample::start(addr)
            .await
            .map_err(|e| format!("cannot start the sample service on {addr}: {e}"))?;
        samples.push(s);
    }
    let rampart = crate::Rampart::start(config)
        .await
        .map_err(|e| format!("rampart: {e}"))?;
    println!("{}", guide(&rampart).await);
    crate::shutdown::run_until_signalled(rampart, false)
        .await
        .map_err(|e| e.to_string())?;
    drop(samples);
    Ok(())
}

async fn guide(r: &crate::Rampart) -> String {
    let inbound = r.listener_addr("inbound").await;
    let outbound = r.listener_addr("outbound").await;
    let mut out = format!(
        "\nrampart demo is running: the sample service on 127.0.0.1:3000 and :3001, behind rampart\n\
         (inbound {}, outbound {}, admin {}).\n\n",
        inbound.map(|a| a.to_string()).unwrap_or_default(),
        outbound.map(|a| a.to_string()).unwrap_or_default(),
        r.admin_addr()
    );
    out.push_str(&curl_guide(DEMO_YAML));
    out.push_str("\nCtrl-C to stop.\n");
    out
}

/// The "What to curl" block of the demo policy's header comment: one source for the file and
/// for what the demo prints.
fn curl_guide(yaml: &str) -> String {
    yaml.lines()
        .skip_while(|l| !l.starts_with("# What to curl"))
        .skip(1)
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.trim_start_matches('#').strip_prefix(' ').unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guide_lists_a_curl_for_each_policy() {
        let g = curl_guide(DEMO_YAML);
        for what in ["rate limit", "retries", "timeout", "outbound", "metrics"] {
            assert!(g.contains(what), "the demo guide must show {what}:\n{g}");
        }
        assert!(g.matches("curl").count() >= 7, "{g}");
    }
}
