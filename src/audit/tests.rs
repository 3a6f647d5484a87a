use std::time::Duration;

use std::io::Write as _;

use super::verify::{check_bytes, check_reader};
use super::*;

fn entry(event: Event, source: Source, errors: &[&str]) -> Entry {
    Entry {
        event,
        source,
        sha256: Some("ab".repeat(32)),
        errors: errors.iter().map(|s| s.to_string()).collect(),
    }
}

fn trail() -> (tempfile::TempDir, PathBuf, AuditLog) {
    let dir = tempfile::tempdir().expect("a temp dir must be creatable");
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::new(IntCounter::new("t", "t").expect("valid counter"));
    log.record(Some(&path), &entry(Event::Start, Source::Start, &[]));
    log.record(Some(&path), &entry(Event::Reload, Source::Sighup, &[]));
    log.record(
        Some(&path),
        &entry(Event::Reload, Source::Post, &["bad: key"]),
    );
    log.record(Some(&path), &entry(Event::Shutdown, Source::Sigterm, &[]));
    (dir, path, log)
}

fn lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("the trail must be readable");
    text.lines().map(str::to_string).collect()
}

#[test]
fn a_written_trail_verifies_and_chains_from_genesis() {
    let (_dir, path, log) = trail();
    let text = std::fs::read_to_string(&path).expect("readable");
    assert_eq!(verify(&text), Ok(4));
    let first: serde_json::Value = serde_json::from_str(&lines(&path)[0]).expect("json");
    assert_eq!(first["prev"], GENESIS);
    assert_eq!(first["event"], "start");
    assert_eq!(first["result"], "ok");
    let third: serde_json::Value = serde_json::from_str(&lines(&path)[2]).expect("json");
    assert_eq!(third["source"], "post");
    assert_eq!(third["result"], "error");
    assert_eq!(third["errors"][0], "bad: key");
    assert_eq!(log.failures.get(), 0);
}

#[test]
fn a_new_log_continues_the_chain_of_an_existing_file() {
    let (_dir, path, _) = trail();
    let again = AuditLog::new(IntCounter::new("t", "t").expect("valid counter"));
    again.record(Some(&path), &entry(Event::Start, Source::Start, &[]));
    let text = std::fs::read_to_string(&path).expect("readable");
    assert_eq!(verify(&text), Ok(5));
}

#[test]
fn a_start_refused_with_a_thousand_errors_still_chains_after_a_restart() {
    // A generated policy can draw thousands of errors; the entry's line stays short enough for
    // the next process to read it whole from the tail and chain on it.
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("audit.jsonl");
    let many: Vec<String> = (0..1000)
        .map(|i| format!("policies.p{i}.rate_limit.per_tenant.rate: `100/sec` is no rate; write it as N/s, N/min or N/h ({i})"))
        .collect();
    let refused = AuditLog::new(IntCounter::new("t", "t").expect("valid counter"));
    refused.record(Some(&path), &Entry::failed_start("ab".repeat(32), many));
    let line = lines(&path).remove(0);
    assert!(line.len() < TAIL_READ as usize, "{} bytes", line.len());
    let first: serde_json::Value = serde_json::from_str(&line).expect("json");
    let errors = first["errors"].as_array().expect("errors");
    assert!(
        errors.len() > 100,
        "as many as fit are kept: {}",
        errors.len()
    );
    assert_eq!(errors[0].as_str().expect("text"), "policies.p0.rate_limit.per_tenant.rate: `100/sec` is no rate; write it as N/s, N/min or N/h (0)");
    let last = errors.last().and_then(|e| e.as_str()).expect("text");
    assert!(last.contains("more error(s)"), "{last}");
    // Errors the line escapes (a control character takes six bytes there) are counted as
    // written: paths in errors are shown as given.
    let escaped = AuditLog::new(IntCounter::new("t", "t").expect("valid counter"));
    let controls: Vec<String> = (0..12).map(|_| "\u{1}\"".repeat(1500)).collect();
    escaped.record(Some(&path), &Entry::failed_start("ab".repeat(32), controls));
    let line = lines(&path).remove(1);
    assert!(line.len() < TAIL_READ as usize, "{} bytes", line.len());
    // One error longer than a line keeps is cut, marked so.
    let long = AuditLog::new(IntCounter::new("t", "t").expect("valid counter"));
    long.record(
        Some(&path),
        &entry(Event::Reload, Source::Sighup, &[&"é".repeat(40_000)]),
    );
    let again = AuditLog::new(IntCounter::new("t", "t").expect("valid counter"));
    again.record(Some(&path), &entry(Event::Start, Source::Start, &[]));
    let text = std::fs::read_to_string(&path).expect("readable");
    assert_eq!(verify(&text), Ok(4));
    assert!(lines(&path)[2].contains("(cut)"));
}

#[test]
fn an_edited_line_is_named() {
    let (_dir, path, _) = trail();
    let mut ls = lines(&path);
    ls[1] = ls[1].replace("sighup", "watch");
    let broken = verify(&(ls.join("\n") + "\n")).expect_err("an edit must break the chain");
    assert_eq!(broken.line, 2);
    assert!(broken.problem.contains("edited"), "{broken}");
}

#[test]
fn an_edit_with_a_recomputed_hash_breaks_the_next_line() {
    let (_dir, path, _) = trail();
    let mut ls = lines(&path);
    let v: serde_json::Value = serde_json::from_str(&ls[1]).expect("json");
    let forged = Entry {
        source: Source::Watch,
        ..entry(Event::Reload, Source::Watch, &[])
    };
    ls[1] = chain_line(
        &forged,
        v["prev"].as_str().expect("prev"),
        SystemTime::now(),
    );
    let broken = verify(&(ls.join("\n") + "\n")).expect_err("must break");
    assert_eq!(broken.line, 3);
}

#[test]
fn a_removed_or_inserted_line_is_named() {
    let (_dir, path, _) = trail();
    let mut ls = lines(&path);
    ls.remove(1);
    assert_eq!(verify(&ls.join("\n")).map_err(|b| b.line), Err(2));
    let mut ls = lines(&path);
    let extra = chain_line(
        &entry(Event::Reload, Source::Sighup, &[]),
        GENESIS,
        SystemTime::now(),
    );
    ls.insert(2, extra);
    assert_eq!(verify(&ls.join("\n")).map_err(|b| b.line), Err(3));
    assert_eq!(verify("").map_err(|b| b.line), Ok(0));
    assert_eq!(verify("{}\n").map_err(|b| b.line), Err(1));
}

#[test]
fn a_write_failure_is_counted_and_not_raised() {
    let dir = tempfile::tempdir().expect("a temp dir must be creatable");
    let log = AuditLog::new(IntCounter::new("t", "t").expect("valid counter"));
    let missing = dir.path().join("no/such/dir/audit.jsonl");
    log.record(Some(&missing), &entry(Event::Start, Source::Start, &[]));
    assert_eq!(log.failures.get(), 1);
    log.record(None, &entry(Event::Start, Source::Start, &[]));
    assert_eq!(log.failures.get(), 1);
}

#[test]
fn times_are_rfc3339_utc() {
    let t = UNIX_EPOCH + Duration::from_millis(1_764_570_905_123);
    assert_eq!(rfc3339(t), "2025-12-01T06:35:05.123Z");
    assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
    assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
}

#[test]
fn lines_that_are_not_entries_are_named_not_panicked_on() {
    let (_dir, path, _) = trail();
    let good = lines(&path);
    for junk in [
        "",
        "not json",
        "{\"prev\": 5}",
        "[1,2,3]",
        "{\"event\":\"start\"}",
        "\u{0}\u{1}\u{fffd}",
        &"{".repeat(10_000),
    ] {
        let mut ls = good.clone();
        ls.insert(1, junk.to_owned());
        let broken = verify(&(ls.join("\n") + "\n")).expect_err("a junk line must break the chain");
        assert_eq!(broken.line, 2, "{junk:?}: {broken}");
    }
}

/// Runs `f` on a thread of its own; fails the test if it has not returned within 5 s.
fn within_5s(f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("recording must return at once, never wait or read for ever");
}

/// A FIFO in the trail's place (nobody reading it) and a device that never ends (`/dev/zero`,
/// read to continue the chain; `/dev/full`) are refused and counted as a failed write: the
/// record returns at once instead of holding the start for ever or reading without end.
#[test]
fn a_fifo_or_a_device_is_refused_at_once() {
    let dir = tempfile::tempdir().expect("a temp dir must be creatable");
    let fifo = crate::logfile::tests::fifo(dir.path(), "audit.fifo");
    let log = std::sync::Arc::new(AuditLog::new(
        IntCounter::new("t", "t").expect("valid counter"),
    ));
    for path in [fifo, PathBuf::from("/dev/zero"), PathBuf::from("/dev/full")] {
        let (trail, before) = (log.clone(), log.failures.get());
        let p = path.clone();
        within_5s(move || trail.record(Some(&p), &entry(Event::Start, Source::Start, &[])));
        assert_eq!(log.failures.get(), before + 1, "{}", path.display());
    }
}

/// Only the file's last [`TAIL_READ`] bytes are read to find the line to chain to.
#[test]
fn only_the_tail_of_a_long_trail_is_read() {
    let (_dir, path, _) = trail();
    let before = lines(&path);
    // A long run of junk before the real lines: the chain continues from the last line.
    let mut text = "x".repeat(3 * TAIL_READ as usize);
    text.push('\n');
    text.push_str(&(before.join("\n") + "\n"));
    std::fs::write(&path, &text).expect("rewrite");
    let file = File::open(&path).expect("open");
    let len = file.metadata().expect("metadata").len();
    let tail = read_tail(&file, len).expect("read the tail");
    let (last, torn) = (tail.last, tail.unended_at.is_some());
    assert_eq!(
        last.as_deref(),
        Some(sha256_hex(before[3].as_bytes()).as_str())
    );
    assert!(!torn);
    // Counted in blocks, the junk line across three of them: four entries, one torn line.
    assert_eq!(count_lines(&file, len).expect("count"), (4, 1));
}

/// `verify` reads a line at a time: read through a buffer far shorter than a line, with torn
/// lines, a line cut inside a character and a file without its last newline, it finds what
/// it finds in the whole text; and a lone newline is no line.
#[test]
fn verify_read_a_line_at_a_time_finds_what_it_finds_in_the_whole_text() {
    let (_dir, path, log) = trail();
    tear(&path, Cut::InACharacter);
    log.record(Some(&path), &entry(Event::Reload, Source::Sighup, &[]));
    tear(&path, Cut::AfterPrev);
    log.record(Some(&path), &entry(Event::Shutdown, Source::Sigterm, &[]));
    let whole = std::fs::read(&path).expect("readable");
    let small = |bytes: &[u8]| {
        check_reader(std::io::BufReader::with_capacity(7, bytes)).expect("a slice reads")
    };
    let checked = small(&whole).expect("intact");
    assert_eq!((checked.entries, &checked.torn), (6, &vec![5, 7]));
    assert_eq!(Ok(checked), check_bytes(&whole));
    let unended = &whole[..whole.len() - 1];
    let read = small(unended).expect("intact without its last newline");
    assert!(read.unended);
    assert_eq!(
        Ok(Checked {
            unended: false,
            ..read
        }),
        check_bytes(&whole)
    );
    assert_eq!(small(unended), check_bytes(unended));
    let mut ls: Vec<&[u8]> = whole.split(|b| *b == b'\n').collect();
    ls.remove(2);
    let cut = ls.join(&b'\n');
    assert_eq!(small(&cut).map_err(|b| b.line), Err(3));
    assert_eq!(small(b"\n").map(|c| c.entries), Ok(0));
    assert_eq!(small(b"\n\n").map_err(|b| b.line), Err(1));
}

/// A reload that moves the trail writes its entry to the old file naming the new one, then to
/// the new file, whose first line continues the old file's head; one that turns auditing off
/// writes to the file it leaves, and [`AuditLog::head`] follows the file written last.
#[test]
fn a_change_of_file_is_recorded_in_both_and_links_them() {
    let (dir, a, log) = trail();
    let b = dir.path().join("b.jsonl");
    let e = entry(Event::Reload, Source::Sighup, &[]);
    log.record_change(Some(&a), Some(&b), &e);
    let (la, lb) = (lines(&a), lines(&b));
    let moved: serde_json::Value = serde_json::from_str(&la[4]).expect("json");
    assert_eq!(moved["next_file"], b.display().to_string());
    let first: serde_json::Value = serde_json::from_str(&lb[0]).expect("json");
    assert_eq!(first["prev"], sha256_hex(la[4].as_bytes()));
    assert_eq!(first["prev_file"], a.display().to_string());
    let checked = check(&(lb.join("\n") + "\n")).expect("a continuation verifies");
    assert_eq!(
        checked.continues,
        Some((sha256_hex(la[4].as_bytes()), a.display().to_string()))
    );
    log.record_change(Some(&b), None, &e);
    let off: serde_json::Value = serde_json::from_str(&lines(&b)[1]).expect("json");
    assert_eq!(off["auditing"], "off");
    assert!(off.get("next_file").is_none(), "{off}");
    let head = log.head().expect("written");
    assert_eq!((head.file, head.entries), (b.clone(), 2));
    assert_eq!(head.head, sha256_hex(lines(&b)[1].as_bytes()));
    // The same file before and after: one entry, no links.
    log.record_change(Some(&b), Some(&b), &e);
    let plain: serde_json::Value = serde_json::from_str(&lines(&b)[2]).expect("json");
    assert!(plain.get("next_file").is_none() && plain.get("prev_file").is_none());
    assert_eq!(log.failures.get(), 0);
}

/// A reload that names the trail's file by another spelling (a longer path, a symlink to it)
/// does not move the trail: one entry, no `next_file` naming the file itself.
#[test]
fn another_spelling_of_the_same_file_is_no_move() {
    let (dir, a, log) = trail();
    std::fs::create_dir(dir.path().join("sub")).expect("a subdirectory");
    let longer = dir.path().join("sub/../audit.jsonl");
    let link = dir.path().join("link.jsonl");
    std::os::unix::fs::symlink(&a, &link).expect("a symlink");
    let e = entry(Event::Reload, Source::Sighup, &[]);
    log.record_change(Some(&a), Some(&longer), &e);
    log.record_change(Some(&longer), Some(&link), &e);
    let ls = lines(&a);
    assert_eq!(ls.len(), 6, "one entry per reload: {ls:#?}");
    for line in &ls[4..] {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        assert!(
            v.get("next_file").is_none() && v.get("prev_file").is_none(),
            "{v}"
        );
    }
    assert_eq!(verify(&(ls.join("\n") + "\n")), Ok(6));
    assert_eq!(log.head().map(|h| h.entries), Some(6));
    assert_eq!(log.failures.get(), 0);
}

/// A first line that does not start at genesis verifies only if it names the file it
/// continues: removing a file's first lines stays detectable.
#[test]
fn a_first_line_past_genesis_needs_a_prev_file() {
    let (_dir, path, _) = trail();
    let ls = lines(&path);
    let cut = ls[1..].join("\n") + "\n";
    let broken = verify(&cut).expect_err("lines cut from the start");
    assert_eq!(broken.line, 1);
    assert!(broken.problem.contains("removed"), "{broken}");
    assert_eq!(check("").map(|c| c.head), Ok(GENESIS.to_string()));
    let whole = check(&(ls.join("\n") + "\n")).expect("intact");
    assert_eq!(whole.head, sha256_hex(ls[3].as_bytes()));
    assert_eq!(whole.hashes.len(), 4);
    assert_eq!(whole.continues, None);
}

/// A file cut in place (same inode, shorter) while rampart runs is opened again before the
/// next entry, whose `prev` still names the entry written last: `verify` shows the cut there,
/// and the count follows the file.
#[test]
fn a_file_cut_in_place_is_read_again_and_the_cut_stays_visible() {
    let (_dir, path, log) = trail();
    let ls = lines(&path);
    std::fs::write(&path, ls[..2].join("\n") + "\n").expect("cut");
    log.record(Some(&path), &entry(Event::Reload, Source::Sighup, &[]));
    let text = std::fs::read_to_string(&path).expect("readable");
    let next: serde_json::Value = serde_json::from_str(&lines(&path)[2]).expect("json");
    assert_eq!(next["prev"], sha256_hex(ls[3].as_bytes()));
    assert_eq!(verify(&text).map_err(|b| b.line), Err(3));
    assert_eq!(log.head().map(|h| h.entries), Some(3));
}

/// Where a write is cut short: inside a character, before the `prev` member, after it.
#[derive(Clone, Copy, Debug)]
enum Cut {
    InACharacter,
    BeforePrev,
    AfterPrev,
}

/// What a crash (or a full disk) in the middle of writing an entry leaves at the end of the
/// trail at `path`: the start of a whole line, cut at `cut`, without a newline.
fn tear(path: &Path, cut: Cut) -> String {
    let whole = chain_line(
        &entry(
            Event::Reload,
            Source::Sighup,
            &["ünïcode: cut inside a character?"],
        ),
        &sha256_hex(
            std::fs::read(path)
                .expect("the trail must be readable")
                .split(|b| *b == b'\n')
                .rfind(|l| !l.is_empty())
                .expect("a last line"),
        ),
        SystemTime::now(),
    );
    let prev = whole.find(",\"prev\":\"").expect("a prev member");
    let cut = match cut {
        Cut::InACharacter => whole.find('ü').expect("a two-byte character") + 1,
        Cut::BeforePrev => prev - 5,
        Cut::AfterPrev => prev + ",\"prev\":\"".len() + 64 + 5,
    };
    let torn = &whole.as_bytes()[..cut];
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("the trail must open for append");
    file.write_all(torn).expect("append the torn bytes");
    String::from_utf8_lossy(torn).into_owned()
}

/// A torn last line is chained to by the next entry, whether a new process writes it (after a
/// crash) or the process whose write was cut short (a full disk): the next entry's `prev` is
/// the sha256 of the torn line's bytes. `verify` then accepts the trail and lists the torn
/// line apart; the count leaves it out and counts it as torn. Cut before the `prev` member
/// and after it (where the torn line's own `prev` must name the line before it), and inside a
/// character (the file is no longer UTF-8 text).
#[test]
fn a_torn_line_the_next_entry_chains_to_is_accepted_and_counted_apart() {
    let cuts = [Cut::InACharacter, Cut::BeforePrev, Cut::AfterPrev];
    for (cut, restart) in cuts.into_iter().flat_map(|c| [(c, true), (c, false)]) {
        let (_dir, path, log) = trail();
        tear(&path, cut);
        let log = if restart {
            AuditLog::new(IntCounter::new("t", "t").expect("valid counter"))
        } else {
            log
        };
        log.record(Some(&path), &entry(Event::Reload, Source::Sighup, &[]));
        let text = std::fs::read(&path).expect("readable");
        let checked = check_bytes(&text).unwrap_or_else(|b| {
            panic!(
                "{cut:?}, restart {restart}: {b}\n{}",
                String::from_utf8_lossy(&text)
            )
        });
        assert_eq!((checked.entries, checked.torn), (5, vec![5]), "{cut:?}");
        let head = log.head().expect("written");
        assert_eq!((head.entries, head.torn), (5, 1), "{cut:?}");
        assert_eq!(head.head, checked.head);
        // The count read back from the file by a process that opens it anew agrees.
        let again = AuditLog::new(IntCounter::new("t", "t").expect("valid counter"));
        again.record(Some(&path), &entry(Event::Shutdown, Source::Sigterm, &[]));
        let head = again.head().expect("written");
        assert_eq!((head.entries, head.torn), (6, 1), "{cut:?}");
        assert_eq!(log.failures.get(), 0);
    }
}

/// A torn line is accepted only where the line after it names it: one inserted between two
/// entries, one put in the place of an entry, one edited after the next entry chained to it,
/// one whose own `prev` (whole) names a line that is not the line before it (lines before it
/// removed), and one at the end that nothing names yet are all broken, at the torn line.
#[test]
fn a_torn_line_the_next_line_does_not_name_is_broken() {
    let (_dir, path, _) = trail();
    let good = lines(&path);
    let partial = |prev: &str| {
        let whole = chain_line(
            &entry(Event::Reload, Source::Post, &[]),
            prev,
            SystemTime::now(),
        );
        whole[..whole.len() - 30].to_owned()
    };
    let inserted = [
        &good[..2],
        &[partial(&sha256_hex(good[1].as_bytes()))],
        &good[2..],
    ]
    .concat();
    let replaced = [
        &good[..1],
        &[partial(&sha256_hex(good[0].as_bytes()))],
        &good[2..],
    ]
    .concat();
    let (_dir, torn_path, _) = trail();
    tear(&torn_path, Cut::AfterPrev);
    let log = AuditLog::new(IntCounter::new("t", "t").expect("valid counter"));
    log.record(Some(&torn_path), &entry(Event::Start, Source::Start, &[]));
    let mut edited = lines(&torn_path);
    edited[4] = edited[4].replacen("sighup", "sigxxx", 1);
    let mut cut_before = lines(&torn_path);
    cut_before.remove(3);
    let cases = [
        ("inserted", inserted, 3),
        ("replaced", replaced, 2),
        ("edited after chained to", edited, 5),
        ("lines before it removed", cut_before, 4),
        (
            "last",
            [&good[..], &[partial(&sha256_hex(good[3].as_bytes()))]].concat(),
            5,
        ),
    ];
    for (what, ls, line) in cases {
        std::fs::write(&path, ls.join("\n") + "\n").expect("rewrite");
        let text = std::fs::read_to_string(&path).expect("readable");
        let broken = verify(&text).expect_err(what);
        assert_eq!(broken.line, line, "{what}: {broken}");
        assert!(
            broken.problem.contains("not a whole audit entry") || what.contains("removed"),
            "{what}: {broken}"
        );
    }
}

/// `audit verify` says "1 entry", not "1 entries".
#[test]
fn one_entry_is_counted_in_the_singular() {
    let dir = tempfile::tempdir().expect("a temp dir must be creatable");
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::new(IntCounter::new("t", "t").expect("valid counter"));
    log.record(Some(&path), &entry(Event::Start, Source::Start, &[]));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert!(verify_files(
        std::slice::from_ref(&path),
        None,
        None,
        &mut out,
        &mut err
    ));
    let out = String::from_utf8(out).expect("utf-8");
    assert!(out.contains(": ok, 1 entry, chain intact"), "{out}");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert!(!verify_files(&[path], None, Some(2), &mut out, &mut err));
    let err = String::from_utf8(err).expect("utf-8");
    assert!(err.contains(": 1 entry, 2 expected"), "{err}");
}
