//! `rampart demo`: the shipped demo policy in front of the built-in sample service.
//!
//! Starts two sample endpoints (127.0.0.1:3000 and :3001), runs `config/demo.yaml` (built into
//! the binary, so the command works from any directory), prints what to curl to see each
//! policy act, and runs until Ctrl-C.
//!
//! The demo's TLS listener needs its certificate and key as files, and the policy names them
//! relative to the repository root. So that the built-in policy still runs from any directory,
//! the binary carries the demo pair too and writes it to a private temp directory, pointing the
//! policy's paths there, for the life of the demo.

mod redis;

use std::path::{Path, PathBuf};

use self::redis::DemoRedis;
use crate::config::Config;
use crate::sample::Sample;

/// The shipped demo policy.
pub const DEMO_YAML: &str = include_str!("../config/demo.yaml");

/// Where the demo policy says its TLS files are (relative to the repository root).
const DEMO_TLS_DIR: &str = "config/demo-tls/";
/// The demo listener's self-signed certificate (demo only; see config/demo-tls/README.md).
const DEMO_CERT: &str = include_str!("../config/demo-tls/cert.pem");
/// Its private key, public in the repository: it protects nothing.
const DEMO_KEY: &str = include_str!("../config/demo-tls/key.pem");

/// The built-in demo TLS files written out; the directory is removed on drop.
#[derive(Debug)]
struct DemoTls {
    dir: PathBuf,
}

/// Runs the demo until SIGINT/SIGTERM.
pub async fn run(path: Option<PathBuf>) -> Result<(), String> {
    // Global limits need a Redis: the built-in policy gets one when redis-server is on PATH.
    let redis = match path {
        Some(_) => Err("a policy file was given".to_owned()),
        None => DemoRedis::start(),
    };
    let (config, _tls) = match &path {
        Some(p) => (Config::load(p).map_err(|e| e.to_string())?, None),
        None => {
            let tls = DemoTls::write()?;
            let mut yaml = DEMO_YAML.replace(DEMO_TLS_DIR, &tls.prefix());
            if let Ok(r) = &redis {
                yaml = r.extend(&yaml);
            }
            let config = Config::from_str(&yaml, "config/demo.yaml").map_err(|e| e.to_string())?;
            (config, Some(tls))
        }
    };
    let mut samples = Vec::new();
    for port in [3000u16, 3001] {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let s = Sample::start(addr)
            .await
            .map_err(|e| format!("cannot start the sample service on {addr}: {e}"))?;
        samples.push(s);
    }
    let builtin = path.is_none();
    let rampart = crate::Rampart::start(config)
        .await
        .map_err(|e| match builtin {
            true => format!("rampart: {}", builtin_start_error(e)),
            false => format!("rampart: {e}"),
        })?;
    println!("{}", guide(&rampart, &redis).await);
    crate::shutdown::run_until_signalled(rampart, false)
        .await
        .map_err(|e| e.to_string())?;
    drop(samples);
    Ok(())
}

async fn guide(r: &crate::Rampart, redis: &Result<DemoRedis, String>) -> String {
    let inbound = r.listener_addr("inbound").await;
    let inbound_tls = r.listener_addr("inbound-tls").await;
    let outbound = r.listener_addr("outbound").await;
    let mut out = format!(
        "\nrampart demo is running: the sample service on 127.0.0.1:3000 and :3001, behind rampart\n\
         (inbound {}, inbound TLS {}, outbound {}, admin {}).\n\n",
        inbound.map(|a| a.to_string()).unwrap_or_default(),
        inbound_tls.map(|a| a.to_string()).unwrap_or_default(),
        outbound.map(|a| a.to_string()).unwrap_or_default(),
        r.admin_addr()
    );
    out.push_str(&curl_guide(DEMO_YAML));
    match redis {
        Ok(r) => out.push_str(&format!("\n{}", r.guide())),
        Err(why) => out.push_str(&format!("\n  global limits (Redis): skipped, {why}\n")),
    }
    out.push_str("\nCtrl-C to stop.\n");
    out
}

/// Where the built-in policy is kept in the repository: its places are given in this file.
const DEMO_ORIGIN: &str = "config/demo.yaml";

/// A start of the built-in policy that could not bind an address, placed in
/// `config/demo.yaml` as the file's own errors are. The policy run is that file with a listener
/// of the demo's own put first when Redis runs (and its TLS paths moved), and is read from no
/// file: the start's own place would say `<config>`, without a line, and count the added
/// listener. The demo's own listener is named plainly.
fn builtin_start_error(e: crate::StartError) -> String {
    use crate::config::{listener_index, place_in, Section};
    use crate::reload::ReloadError;
    use crate::StartError;
    match e {
        StartError::Admin { addr, error, .. } => {
            let at = place_in(DEMO_YAML, DEMO_ORIGIN, &Section::AdminListen);
            format!("{at}: cannot bind the admin listener on {addr}: {error}")
        }
        StartError::Listener(ReloadError::Bind {
            name, addr, error, ..
        }) => match listener_index(DEMO_YAML, &name) {
            Some(i) => {
                let at = place_in(DEMO_YAML, DEMO_ORIGIN, &Section::Listen(i));
                format!("{at}: cannot bind listener {name} on {addr}: {error}")
            }
            None => format!(
                "cannot bind the demo's own listener {name} (global limits, added to \
                 {DEMO_ORIGIN} when redis-server is on PATH) on {addr}: {error}"
            ),
        },
        other => other.to_string(),
    }
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

// === impl DemoTls ===

impl DemoTls {
    /// Writes the built-in pair into a fresh directory under the system temp dir, made here
    /// (owner only) and never one found there: another local user could have placed one, with
    /// links in it to files of ours. The files are created new, so no link is followed.
    fn write() -> Result<DemoTls, String> {
        use std::os::unix::fs::DirBuilderExt;
        let tmp = std::env::temp_dir();
        let mut tried = 0u32;
        let dir = loop {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let dir = tmp.join(format!(
                "rampart-demo-tls-{}-{nanos:08x}",
                std::process::id()
            ));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => break dir,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tried < 16 => tried += 1,
                Err(e) => {
                    return Err(format!(
                        "cannot make a directory for the demo TLS files in {}: {e}",
                        tmp.display()
                    ))
                }
            }
        };
        let tls = DemoTls { dir };
        let written = write_private(&tls.dir.join("cert.pem"), DEMO_CERT)
            .and_then(|()| write_private(&tls.dir.join("key.pem"), DEMO_KEY));
        match written {
            Ok(()) => Ok(tls),
            Err(e) => Err(format!(
                "cannot write the demo TLS files to {}: {e}",
                tls.dir.display()
            )),
        }
    }

    /// The directory as a path prefix, to put in place of [`DEMO_TLS_DIR`].
    fn prefix(&self) -> String {
        format!("{}/", self.dir.display())
    }
}

impl Drop for DemoTls {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_tls_files_go_to_a_directory_made_for_them_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        let (a, b) = (DemoTls::write().expect("a"), DemoTls::write().expect("b"));
        // Never a directory found in place: each start makes its own.
        assert_ne!(a.dir, b.dir);
        assert_eq!(mode(&a.dir), 0o700);
        assert_eq!(mode(&a.dir.join("key.pem")), 0o600);
        assert_eq!(
            std::fs::read_to_string(a.dir.join("cert.pem")).expect("cert"),
            DEMO_CERT
        );
        // The files are made new: one already there (or a link put there) is refused.
        assert!(write_private(&a.dir.join("cert.pem"), "x").is_err());
        let dir = a.dir.clone();
        drop(a);
        assert!(!dir.exists(), "removed when the demo ends");
    }

    /// The 1-based line and column of the value of the first `listen: addr` of DEMO_YAML.
    fn place_of(addr: &str) -> (usize, usize) {
        let needle = format!("listen: {addr}");
        let (i, line) = DEMO_YAML
            .lines()
            .enumerate()
            .find(|(_, l)| l.contains(&needle) && !l.trim_start().starts_with('#'))
            .expect("the line");
        (i + 1, line.find(addr).expect("on it") + 1)
    }

    fn bind(name: &str, addr: &str) -> crate::StartError {
        crate::StartError::Listener(crate::reload::ReloadError::Bind {
            at: "<config>: listeners[1].listen".into(),
            name: name.into(),
            addr: addr.parse().expect("addr"),
            error: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        })
    }

    /// A listener of the built-in policy that cannot bind is placed where config/demo.yaml
    /// gives its address, at its index in that file, whatever the demo put before it.
    #[test]
    fn a_bind_failure_of_the_built_in_policy_is_placed_in_config_demo_yaml() {
        let (line, col) = place_of("127.0.0.1:8080");
        let got = builtin_start_error(bind("inbound", "127.0.0.1:8080"));
        let want = format!(
            "config/demo.yaml:{line}:{col}: listeners[0].listen: cannot bind listener inbound on 127.0.0.1:8080"
        );
        assert!(got.starts_with(&want), "want {want:?}, got {got:?}");
        let (line, col) = place_of("127.0.0.1:15001");
        let got = builtin_start_error(bind("outbound", "127.0.0.1:15001"));
        let want = format!("config/demo.yaml:{line}:{col}: listeners[2].listen: cannot bind");
        assert!(got.starts_with(&want), "want {want:?}, got {got:?}");
        let (line, col) = place_of("127.0.0.1:9901");
        let admin = crate::StartError::Admin {
            at: "<config>: admin.listen".into(),
            addr: "127.0.0.1:9901".parse().expect("addr"),
            error: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        };
        let want = format!("config/demo.yaml:{line}:{col}: admin.listen: cannot bind the admin");
        let got = builtin_start_error(admin);
        assert!(got.starts_with(&want), "want {want:?}, got {got:?}");
    }

    /// The listener the demo adds (global limits) is in no file: named plainly, no place.
    #[test]
    fn a_bind_failure_of_the_demos_own_listener_names_it() {
        let got = builtin_start_error(bind("inbound-global", "127.0.0.1:8081"));
        assert!(
            got.starts_with("cannot bind the demo's own listener inbound-global (global limits"),
            "{got}"
        );
        assert!(got.contains("127.0.0.1:8081"), "{got}");
        assert!(!got.contains("listeners["), "{got}");
    }

    #[test]
    fn the_guide_lists_a_curl_for_each_policy() {
        let g = curl_guide(DEMO_YAML);
        for what in [
            "rate limit",
            "retries",
            "timeout",
            "outbound",
            "metrics",
            "https://",
        ] {
            assert!(g.contains(what), "the demo guide must show {what}:\n{g}");
        }
        assert!(g.matches("curl").count() >= 7, "{g}");
    }

    #[test]
    fn the_built_in_policy_runs_on_the_built_in_tls_files_from_anywhere() {
        let tls = DemoTls::write().expect("the temp dir is writable");
        let yaml = DEMO_YAML.replace(DEMO_TLS_DIR, &tls.prefix());
        assert!(
            !yaml.contains(DEMO_TLS_DIR),
            "every demo TLS path is rewritten"
        );
        let config =
            Config::from_str(&yaml, "config/demo.yaml").expect("the demo policy validates");
        let files = &config.read.tls;
        assert!(files.listeners.contains_key("inbound-tls"));
        let dir = tls.dir.clone();
        drop(tls);
        assert!(!dir.exists(), "the written files are removed");
    }
}
