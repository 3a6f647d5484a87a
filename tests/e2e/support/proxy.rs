//! Runs the `rampart` binary on a rendered policy file and waits until it is ready.
//!
//! Policy templates name their addresses with placeholders instead of `format!` braces (YAML
//! uses braces itself): `$ADMIN` is the admin address (`$ADMIN_PORT` its port alone, for an
//! admin bound to another address of this machine, such as `[::]`), `$LISTEN_<name>` a free address for a
//! listener (the same name always gets the same address for the life of the proxy), and any
//! `$NAME` given with [`ProxyBuilder::var`] is replaced by its value.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::{http, Closed};

/// How long a proxy may take to answer `/readyz` 200 after spawn.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Collects what a proxy is started with.
#[derive(Debug)]
pub struct ProxyBuilder {
    template: String,
    vars: Vec<(String, String)>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    configmap: bool,
    closed: Vec<Closed>,
    launcher: Vec<String>,
    stdout_unread: bool,
    /// `--log-format`: `json` unless [`ProxyBuilder::text_log`].
    log_format: &'static str,
}

/// A running `rampart run` child. Killed (by PID) on drop.
#[derive(Debug)]
pub struct Proxy {
    child: Child,
    exited: Option<ExitStatus>,
    dir: tempfile::TempDir,
    config_path: PathBuf,
    log_path: PathBuf,
    admin: SocketAddr,
    listeners: BTreeMap<String, SocketAddr>,
    vars: Vec<(String, String)>,
    /// Generation of the ConfigMap-style layout, if the file is mounted that way.
    configmap: Option<u32>,
    /// Dead addresses the file names, kept closed while the proxy lives.
    _closed: Vec<Closed>,
    /// The reading end of stdout, with [`ProxyBuilder::stdout_unread`]: held, never read.
    stdout: Option<std::process::ChildStdout>,
}

/// A policy file rendered into a temp dir, with the addresses its placeholders got.
#[derive(Debug)]
pub struct Rendered {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub text: String,
    pub admin: SocketAddr,
    pub listeners: BTreeMap<String, SocketAddr>,
}

/// Path of the binary under test: `RAMPART_BIN` if set (to test a release build or a
/// binary built elsewhere), else the one cargo built for this test run.
pub fn bin() -> String {
    std::env::var("RAMPART_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_rampart").to_owned())
}

/// Runs the binary with `args` (a one-shot command: `validate`, `health`, a start that must
/// fail), bounded to 15 s (the child is killed if it overruns).
pub async fn run(args: &[&str]) -> std::process::Output {
    run_env(args, &[]).await
}

/// [`run`] with the environment variables `env` set (after `RUST_LOG=info`, which one of them
/// may replace).
pub async fn run_env(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let child = tokio::process::Command::new(bin())
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("RAMPART_CONFIG")
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the rampart binary must start");
    tokio::time::timeout(std::time::Duration::from_secs(15), child.wait_with_output())
        .await
        .expect("rampart must exit within 15 s")
        .expect("rampart's output must be readable")
}

// === impl ProxyBuilder ===

impl ProxyBuilder {
    /// Replaces `$name` by `value` in the template (and in later rewrites).
    pub fn var(mut self, name: &str, value: impl Display) -> Self {
        self.vars.push((format!("${name}"), value.to_string()));
        // Longest first, so `$APP` never eats the start of `$APP2`.
        self.vars.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
        self
    }

    /// Replaces `$name` by an address that refuses connections for the life of the proxy (a
    /// dead upstream endpoint; see [`Closed`]).
    pub fn closed(mut self, name: &str) -> Self {
        let dead = Closed::new();
        self = self.var(name, &dead);
        self.closed.push(dead);
        self
    }

    /// Sets an environment variable of the proxy process (e.g. `RAMPART_WORKERS`).
    pub fn env(mut self, name: &str, value: impl Display) -> Self {
        self.envs.push((name.to_owned(), value.to_string()));
        self
    }

    /// Adds a command-line argument after `run --config FILE --log-format json`.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    /// Runs the binary through `launcher` (a command and its arguments, given the binary and
    /// its arguments after them), which must `exec` it, so the child's PID stays rampart's:
    /// e.g. `unshare --mount sh -c '...; exec "$@"' sh`.
    pub fn launcher(mut self, launcher: &[&str]) -> Self {
        self.launcher = launcher.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Connects the proxy's stdout to a pipe that nobody reads (as a stalled log collector):
    /// once the pipe is full, every write to stdout would wait. See [`Proxy::stdout_pipe`].
    pub fn stdout_unread(mut self) -> Self {
        self.stdout_unread = true;
        self
    }

    /// Logs in text (`--log-format text`), as people read it, instead of JSON.
    pub fn text_log(mut self) -> Self {
        self.log_format = "text";
        self
    }

    /// Lays the policy file out as a Kubernetes ConfigMap volume does: `rampart.yaml` is a
    /// symlink to `..data/rampart.yaml`, and `..data` a symlink to a versioned directory that
    /// [`Proxy::swap_configmap`] replaces atomically.
    pub fn configmap(mut self) -> Self {
        self.configmap = true;
        self
    }

    /// Renders the template into a temp file without starting anything.
    pub fn render(&self) -> Rendered {
        // The admin port stays bound while the listeners' ports are picked, so the kernel
        // cannot hand the same free port out twice for one file.
        let held =
            std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0 must work");
        let admin = held
            .local_addr()
            .expect("a bound socket must have an address");
        let mut listeners = BTreeMap::new();
        let text = render(&self.template, &self.vars, admin, &mut listeners);
        drop(held);
        let dir = tempfile::tempdir().expect("a temp dir must be creatable");
        let path = dir.path().join("rampart.yaml");
        std::fs::write(&path, &text).expect("the policy file must be writable");
        Rendered {
            dir,
            path,
            text,
            admin,
            listeners,
        }
    }

    /// Starts `rampart run` and waits (at most 15 s) until admin `/readyz` answers 200;
    /// panics with the proxy's log otherwise.
    ///
    /// The ports are picked free (`free_addr`) but only bound by rampart later, so another
    /// test's connection can take one in between: a start that fails with an address in use
    /// is tried again, on new ports, twice at most.
    pub async fn spawn(self) -> Proxy {
        let mut attempt = 1;
        loop {
            let mut proxy = self.start();
            match proxy.wait_ready().await {
                Ok(()) => {
                    proxy._closed = self.closed;
                    return proxy;
                }
                Err(why) if attempt < 3 && proxy.exited.is_some() && why.contains("in use") => {
                    eprintln!("a port was taken before rampart bound it; trying again: {why}");
                    attempt += 1;
                }
                Err(why) => panic!("{why}"),
            }
        }
    }

    /// Renders the template on fresh ports and starts `rampart run` on it.
    fn start(&self) -> Proxy {
        let Rendered {
            dir,
            path,
            text,
            admin,
            listeners,
        } = self.render();
        let configmap = self.configmap.then(|| {
            std::fs::remove_file(&path).expect("the plain file must be removable");
            configmap_write(dir.path(), 1, &text);
            std::os::unix::fs::symlink("..data/rampart.yaml", &path).expect("symlink");
            1
        });
        let log_path = dir.path().join("rampart.log");
        let log = File::create(&log_path).expect("the log file must be creatable");
        let mut command = match self.launcher.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        let mut child = command
            .arg("run")
            .arg("--config")
            .arg(&path)
            .args(["--log-format", self.log_format])
            .args(&self.args)
            .env("RUST_LOG", "info")
            .env_remove("RAMPART_CONFIG")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(if self.stdout_unread {
                Stdio::piped()
            } else {
                Stdio::from(log.try_clone().expect("the log file must be clonable"))
            })
            .stderr(log)
            .spawn()
            .expect("the rampart binary must start");
        let stdout = child.stdout.take();
        Proxy {
            child,
            exited: None,
            dir,
            config_path: path,
            log_path,
            admin,
            listeners,
            vars: self.vars.clone(),
            configmap,
            _closed: Vec::new(),
            stdout,
        }
    }
}

// === impl Proxy ===

impl Proxy {
    /// A builder for a proxy running `template` (see the module doc for placeholders).
    pub fn builder(template: &str) -> ProxyBuilder {
        ProxyBuilder {
            template: template.to_owned(),
            vars: Vec::new(),
            args: Vec::new(),
            envs: Vec::new(),
            configmap: false,
            closed: Vec::new(),
            launcher: Vec::new(),
            stdout_unread: false,
            log_format: "json",
        }
    }

    /// The admin listener's address.
    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// The address `$LISTEN_<name>` was given.
    pub fn listener(&self, name: &str) -> SocketAddr {
        *self
            .listeners
            .get(name)
            .unwrap_or_else(|| panic!("no placeholder $LISTEN_{name} in any policy so far"))
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's resident memory (`VmRSS`), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// The reading end of the proxy's stdout, with [`ProxyBuilder::stdout_unread`].
    pub fn stdout_pipe(&self) -> Option<&std::process::ChildStdout> {
        self.stdout.as_ref()
    }

    /// The policy file the proxy runs on.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// A scratch directory that lives as long as the proxy.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the proxy wrote to stdout and stderr so far (stderr only with
    /// [`ProxyBuilder::stdout_unread`]).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Overwrites the policy file with `template`, rendered with the same variables and
    /// listener addresses (new `$LISTEN_<name>`s get new free addresses). Returns the text.
    pub fn rewrite_config(&mut self, template: &str) -> String {
        let text = render(template, &self.vars, self.admin, &mut self.listeners);
        // Write then rename, as a ConfigMap update does: a reader never sees half a file.
        let tmp = self.dir.path().join("rampart.yaml.new");
        std::fs::write(&tmp, &text).expect("the policy file must be writable");
        std::fs::rename(&tmp, &self.config_path).expect("the policy file must be replaceable");
        text
    }

    /// Replaces the policy as the kubelet updates a ConfigMap volume: a new versioned
    /// directory, then one atomic rename of the `..data` symlink. The file's own inode never
    /// changes, so only a watcher that follows the symlinks sees it. Returns the text.
    pub fn swap_configmap(&mut self, template: &str) -> String {
        let generation = self.configmap.expect("spawned with .configmap()") + 1;
        self.configmap = Some(generation);
        let text = render(template, &self.vars, self.admin, &mut self.listeners);
        configmap_write(self.dir.path(), generation, &text);
        text
    }

    /// Sends `SIGHUP`, `SIGTERM`, `SIGINT`… (`sig` without the `SIG`) with `kill`.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("`kill` must run");
        assert!(status.success(), "kill -{sig} {} failed", self.pid());
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exited() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn try_exited(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("try_wait must work");
        }
        self.exited
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.try_exited() {
                return Err(format!(
                    "rampart exited ({status}) before ready; log:\n{}",
                    self.log()
                ));
            }
            if let Ok(rsp) = http::try_get(self.admin, "/readyz", &[]).await {
                if rsp.status == 200 {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "rampart not ready on {} within {READY_TIMEOUT:?}; log:\n{}",
                    self.admin,
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if self.try_exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- rampart log ({}) ---\n{}",
                self.log_path.display(),
                self.log()
            );
        }
    }
}

/// Writes `..vN/rampart.yaml` and points `..data` at `..vN` with one rename.
fn configmap_write(dir: &Path, generation: u32, text: &str) {
    let version = format!("..v{generation}");
    std::fs::create_dir(dir.join(&version)).expect("the version dir must be creatable");
    std::fs::write(dir.join(&version).join("rampart.yaml"), text).expect("write");
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(&version, &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.join("..data")).expect("the ..data swap must work");
}

fn render(
    template: &str,
    vars: &[(String, String)],
    admin: SocketAddr,
    listeners: &mut BTreeMap<String, SocketAddr>,
) -> String {
    let mut text = template
        .replace("$ADMIN_PORT", &admin.port().to_string())
        .replace("$ADMIN", &admin.to_string());
    for (k, v) in vars {
        text = text.replace(k.as_str(), v);
    }
    const MARK: &str = "$LISTEN_";
    // Each new port stays bound until the whole file is rendered: ports picked one after
    // another and released at once can come back equal (seen: a listener given the admin
    // port), and rampart refuses such a file.
    let mut held = Vec::new();
    let mut pick = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0 must work");
        let addr = l.local_addr().expect("a bound socket must have an address");
        held.push(l);
        addr
    };
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find(MARK) {
        out.push_str(&rest[..at]);
        let tail = &rest[at + MARK.len()..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let addr = *listeners.entry(name.to_owned()).or_insert_with(&mut pick);
        out.push_str(&addr.to_string());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}
