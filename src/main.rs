//! The `rampart` binary: command line, logging, runtime, exit codes. Nothing else.

use std::process::ExitCode;

use clap::Parser;
use rampart::cli::{AuditCommand, Cli, Command};

fn main() -> ExitCode {
    let cli = parse_command_line();
    // Kept to the end of `main`: dropping it writes the log lines still queued (bounded).
    let _logging = rampart::logging::init(cli.log_format);
    if let Command::Validate { config } = &cli.command {
        return match rampart::load_config(config) {
            Ok(c) => {
                for w in &c.warnings {
                    say(&mut std::io::stderr(), format_args!("{}", w.warning_line()));
                }
                let summary = format_args!("{}: {}", config.display(), c.summary());
                say(&mut std::io::stdout(), summary);
                ExitCode::SUCCESS
            }
            Err(errs) => {
                say(&mut std::io::stderr(), format_args!("{errs}"));
                ExitCode::FAILURE
            }
        };
    }
    if let Command::Audit {
        action:
            AuditCommand::Verify {
                file,
                expect_head,
                expect_count,
            },
    } = &cli.command
    {
        let ok = rampart::audit::verify_files(
            file,
            expect_head.as_deref(),
            *expect_count,
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        );
        return if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    if let Command::Health {
        admin,
        config,
        path,
        timeout,
    } = &cli.command
    {
        return health(*admin, config.as_deref(), path, timeout.0);
    }
    raise_open_file_limit();
    let runtime = match build_runtime(matches!(cli.command, Command::Run { .. })) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rampart: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run { config, watch } => run(config, watch).await,
            Command::Demo { config } => rampart::demo::run(config).await,
            Command::Sample { listen } => rampart::sample::serve_forever(listen)
                .await
                .map_err(|e| format!("rampart sample: cannot serve on {listen}: {e}")),
            Command::Validate { .. } | Command::Audit { .. } | Command::Health { .. } => Ok(()),
        }
    });
    // Drained by now. Dropping the runtime would wait without end for blocking work still
    // running, such as a DNS lookup (`getaddrinfo`) stuck on an unreachable resolver, and keep
    // a drained process alive past its grace: give such work a moment, then leave it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}

/// The command line, with `RAMPART_CONFIG` set but empty (an env file's `RAMPART_CONFIG=`)
/// taken as unset and named when a file is then missing: clap would say "a value is required
/// for '--config'" to someone who passed no `--config`.
fn parse_command_line() -> Cli {
    let empty = std::env::var_os("RAMPART_CONFIG").is_some_and(|v| v.is_empty());
    if empty {
        // Before any thread starts: the environment is read only here.
        std::env::remove_var("RAMPART_CONFIG");
    }
    match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if empty && e.kind() == clap::error::ErrorKind::MissingRequiredArgument => {
            let _ = e.print();
            eprintln!("note: RAMPART_CONFIG is set but empty, so it names no policy file");
            std::process::exit(e.exit_code());
        }
        Err(e) => e.exit(),
    }
}

async fn run(path: std::path::PathBuf, watch: bool) -> Result<(), String> {
    // First: reading the policy and binding take a while, and a SIGHUP (or SIGTERM) in that
    // time must not end the process the way the default action does.
    let signals = rampart::shutdown::Signals::catch()
        .map_err(|e| format!("rampart: cannot catch signals: {e}"))?;
    let config = rampart::load_config(&path).map_err(|e| {
        rampart::audit_refused_start(&path, &e);
        e.to_string()
    })?;
    let workers = rampart::workers::Workers::start(worker_count())
        .map_err(|e| format!("rampart: cannot start the worker threads: {e}"))?;
    let rampart = rampart::Rampart::start_on(config, workers)
        .await
        .map_err(|e| format!("rampart: {e}"))?;
    rampart::shutdown::run_with(rampart, watch, signals)
        .await
        .map_err(|e| e.to_string())
}

/// `rampart health`: 0 and one line when the admin path answers 200, else 1 and why; all of
/// it, reading the policy file for `admin.listen` included, within `timeout`.
fn health(
    admin: Option<std::net::SocketAddr>,
    config: Option<&std::path::Path>,
    path: &str,
    timeout: std::time::Duration,
) -> ExitCode {
    let deadline = tokio::time::Instant::now() + timeout;
    let found = match (admin, config) {
        // Nothing to read: no thread, whose start a loaded machine may delay.
        (Some(_), _) | (None, None) => Some(rampart::health::admin_addr(admin, None)),
        (None, Some(file)) => admin_from_file_within(file, timeout),
    };
    let Some((addr, warning)) = found else {
        let file = config.map_or_else(String::new, |p| p.display().to_string());
        eprintln!(
            "rampart health: timed out reading admin.listen from {file} (--timeout {timeout:?})"
        );
        return ExitCode::FAILURE;
    };
    if let Some(w) = warning {
        eprintln!("rampart health: {w}");
    }
    match rampart::health::probe_until(addr, path, deadline, timeout) {
        Ok(status) => {
            say(
                &mut std::io::stdout(),
                format_args!("{addr}{path}: {status}"),
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rampart health: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The admin address `rampart health` takes from the policy file `file`, read on a thread of
/// its own, so that a file that does not answer (a stalled network mount) cannot hold the probe
/// past its budget: `main` returning ends the process, thread and all. `None` when the read
/// did not end within `timeout`.
fn admin_from_file_within(
    file: &std::path::Path,
    timeout: std::time::Duration,
) -> Option<(std::net::SocketAddr, Option<String>)> {
    let (done, wait) = std::sync::mpsc::channel();
    let owned = file.to_path_buf();
    std::thread::Builder::new()
        .name("rampart-health-config".into())
        .spawn(move || {
            let _ = done.send(rampart::health::admin_addr(None, Some(&owned)));
        })
        .ok()?;
    wait.recv_timeout(timeout).ok()
}

/// Raises the open-file soft limit to the hard limit (SPEC §14): a proxy holds two descriptors
/// per proxied connection, and the usual soft default of 1024 runs out long before memory does.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

/// Most worker threads `RAMPART_WORKERS` may ask for: far past any core count, short of what
/// would run the process out of threads or descriptors before it serves.
const MAX_WORKERS: usize = 256;

/// How many workers serve connections: `RAMPART_WORKERS` (at most [`MAX_WORKERS`]), else one
/// per core (also, with a warning, for a value that is not a number or is 0).
fn worker_count() -> usize {
    let cores = || std::thread::available_parallelism().map_or(1, usize::from);
    match std::env::var("RAMPART_WORKERS") {
        Err(_) => cores(),
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > MAX_WORKERS => {
                tracing::warn!(
                    value = n,
                    most = MAX_WORKERS,
                    "RAMPART_WORKERS is above the most; using the most"
                );
                MAX_WORKERS
            }
            // No worker cannot serve: not a count, warned about as a value that is not a
            // number is (before, it ran one worker without a word).
            Ok(0) => {
                tracing::warn!(value = %v, "RAMPART_WORKERS is 0, not a count of workers; using one worker per core");
                cores()
            }
            Ok(n) => n,
            Err(_) => {
                tracing::warn!(value = %v, "RAMPART_WORKERS is not a number; using one worker per core");
                cores()
            }
        },
    }
}

/// The main thread's runtime. For `rampart run` it is tokio's current-thread scheduler and
/// worker 0; `run` adds the other workers as threads of their own (`rampart::workers`), each
/// with the same kind of runtime: thread per core, without the work-stealing machinery (shared
/// run queues, cross-thread wake-ups) that independent connections have no use for. The other
/// commands (`demo`, `sample`) run on tokio's multi-threaded scheduler with `RAMPART_WORKERS`
/// threads (current-thread for one).
fn build_runtime(run: bool) -> std::io::Result<tokio::runtime::Runtime> {
    let n = if run { 1 } else { worker_count() };
    let mut b = if n <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(n);
        b
    };
    b.enable_all().build()
}

/// One line of a command's output. A stream that cannot take it (a pipe closed early, as
/// `rampart validate ... | head -1` closes it; a full disk) loses the line, not the verdict:
/// the exit code is the command's, where `println!` would panic (exit 101).
fn say(out: &mut impl std::io::Write, line: std::fmt::Arguments<'_>) {
    let _ = writeln!(out, "{line}");
}
