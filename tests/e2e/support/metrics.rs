//! Reads `/metrics` and finds values in the Prometheus text format.

use std::net::SocketAddr;

use super::http;

/// The admin `/metrics` text; panics unless it answers 200.
pub async fn metrics(admin: SocketAddr) -> String {
    let rsp = http::get(admin, "/metrics", &[]).await;
    assert_eq!(rsp.status, 200, "/metrics must answer 200");
    rsp.text()
}

/// The sum of every sample of `name` whose labels include all of `labels`; `None` if no
/// sample matches. With every label of a series given this is that series' value.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some((series, value)) = parse_line(line) else {
            continue;
        };
        if series.name != name {
            continue;
        }
        let all = labels
            .iter()
            .all(|(k, v)| series.labels.iter().any(|(sk, sv)| sk == k && sv == v));
        if all {
            *found.get_or_insert(0.0) += value;
        }
    }
    found
}

/// Asserts from `admin`'s `/metrics` that `upstream` counted one request never sent, for
/// `cause`, in `rampart_upstream_unsent_total`, no 504 try, and two 200 tries (the request
/// before and the one after); gives the scrape.
pub async fn one_unsent_two_tries(admin: SocketAddr, upstream: &str, cause: &str) -> String {
    let text = metrics(admin).await;
    let value = |name: &str, labels: &[(&str, &str)]| metric_value(&text, name, labels);
    let unsent = [("upstream", upstream), ("cause", cause)];
    assert_eq!(
        value("rampart_upstream_unsent_total", &unsent),
        Some(1.0),
        "{text}"
    );
    let tries = |code| {
        value(
            "rampart_upstream_requests_total",
            &[("upstream", upstream), ("code", code)],
        )
    };
    assert_eq!(tries("504"), None, "no 504 try: {text}");
    assert_eq!(tries("200"), Some(2.0), "{text}");
    text
}

/// Every distinct value `label` takes in the samples of `name`.
pub fn label_values(text: &str, name: &str, label: &str) -> Vec<String> {
    let mut out: Vec<String> = text
        .lines()
        .filter_map(parse_line)
        .filter(|(s, _)| s.name == name)
        .filter_map(|(s, _)| s.labels.into_iter().find(|(k, _)| k == label).map(|l| l.1))
        .collect();
    out.sort();
    out.dedup();
    out
}

#[derive(Debug)]
struct Series {
    name: String,
    labels: Vec<(String, String)>,
}

/// `name{a="x",b="y"} 1.5 [timestamp]` → series and value; comments and blanks → `None`.
fn parse_line(line: &str) -> Option<(Series, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let mut key = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '}' => {
                    end = Some(i + 1);
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    // A quoted value with \\, \" and \n escapes.
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        }
        rest = &body[end?..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((Series { name, labels }, value))
}

#[test]
fn matcher_reads_labels_and_sums_subsets() {
    let text = "# HELP x_total help\n# TYPE x_total counter\n\
                x_total{route=\"app\",code=\"200\",tenant=\"a\\\"b\"} 2\n\
                x_total{route=\"app\",code=\"200\",tenant=\"c\"} 3\n\
                x_total{route=\"app\",code=\"503\",tenant=\"c\"} 1e0\n\
                y 7\n";
    assert_eq!(metric_value(text, "x_total", &[("code", "200")]), Some(5.0));
    assert_eq!(
        metric_value(text, "x_total", &[("tenant", "a\"b")]),
        Some(2.0)
    );
    assert_eq!(metric_value(text, "x_total", &[("code", "404")]), None);
    assert_eq!(metric_value(text, "y", &[]), Some(7.0));
    assert_eq!(metric_value(text, "x", &[]), None);
    assert_eq!(label_values(text, "x_total", "tenant"), ["a\"b", "c"]);
}

/// `rampart_config_reloads_total{result}` in `text`; 0 when absent.
pub fn reloads(text: &str, result: &str) -> f64 {
    metric_value(text, "rampart_config_reloads_total", &[("result", result)]).unwrap_or(0.0)
}

/// The sha256 of the config in force, from admin `/config`.
pub async fn config_sha(admin: SocketAddr) -> String {
    let cfg = http::get(admin, "/config", &[]).await.json();
    cfg["sha256"].as_str().unwrap_or_default().to_owned()
}
