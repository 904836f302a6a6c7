//! A strict reader of the Prometheus text exposition (0.0.4) and of
//! OpenMetrics 1.0 text, for the metrics tests of tyr-server and tyrd
//! (tyrd's test includes this file by path). It refuses what a scraper
//! would refuse — bad names, bad label syntax, unparsable values, samples
//! of undeclared families, histograms without `le` or whose `+Inf` bucket
//! disagrees with `_count` — and checks the project's naming rules:
//! counters end in `_total`, every other family in its unit.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};

/// Which text format is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `text/plain; version=0.0.4`.
    Prometheus,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's name (with `_total`, `_bucket`, ... suffixes).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
    /// The family it belongs to.
    pub family: String,
}

/// A parsed exposition.
#[derive(Debug, Default)]
pub struct Exposition {
    /// Family name → type (`counter`, `gauge`, `histogram`, ...).
    pub types: HashMap<String, String>,
    /// Family name → unit (OpenMetrics `# UNIT`).
    pub units: HashMap<String, String>,
    /// Every sample, in order.
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// The value of the sample `name` whose labels include `labels`; panics when none or several match.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let matching: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .collect();
        assert_eq!(matching.len(), 1, "exactly one sample {name}{labels:?}, found {matching:?}");
        matching[0].value
    }

    /// The value of `name` with `labels`, if present.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .map(|s| s.value)
    }

    /// Sum of every sample named `name` (all label sets).
    pub fn sum(&self, name: &str) -> f64 {
        self.samples.iter().filter(|s| s.name == name).map(|s| s.value).sum()
    }
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text.parse::<f64>().map_err(|e| format!("value {text:?}: {e}")),
    }
}

/// Parses `{a="x",b="y"}` at the start of `text`; returns the labels and the rest.
fn parse_labels(text: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let Some(mut rest) = text.strip_prefix('{') else { return Ok((labels, text)) };
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("label without '='")?;
        let name = &rest[..eq];
        if !valid_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..].strip_prefix('"').ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, '\n')) => return Err("newline in a label value".to_owned()),
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".to_owned()),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        rest = &rest[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// The family a sample name belongs to, given the declared types.
fn family_of(name: &str, types: &HashMap<String, String>, flavor: Flavor) -> Option<String> {
    if types.contains_key(name) {
        let kind = &types[name];
        // OpenMetrics counters are declared without `_total`; their samples carry it.
        if !(flavor == Flavor::OpenMetrics && kind == "counter") {
            return Some(name.to_owned());
        }
    }
    let suffixes: &[&str] = match flavor {
        Flavor::Prometheus => &["_bucket", "_sum", "_count"],
        Flavor::OpenMetrics => &["_total", "_created", "_bucket", "_sum", "_count", "_info"],
    };
    suffixes.iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        let kind = types.get(base)?;
        let fits = matches!(
            (*suffix, kind.as_str()),
            ("_total" | "_created", "counter")
                | ("_bucket" | "_sum" | "_count" | "_created", "histogram")
                | ("_info", "info")
        );
        fits.then(|| base.to_owned())
    })
}

/// Parses `text`; every problem is an `Err` naming the line.
pub fn parse(text: &str, flavor: Flavor) -> Result<Exposition, String> {
    let mut exposition = Exposition::default();
    let mut eof = false;
    for (number, line) in text.lines().enumerate() {
        let at = |message: String| format!("line {}: {message}: {line:?}", number + 1);
        if eof {
            return Err(at("content after # EOF".to_owned()));
        }
        if line == "# EOF" && flavor == Flavor::OpenMetrics {
            eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (keyword, name, tail) =
                (parts.next().unwrap_or_default(), parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
            if !valid_metric_name(name) {
                return Err(at(format!("bad metric name {name:?}")));
            }
            match keyword {
                "HELP" => {}
                "TYPE" => {
                    let known = ["counter", "gauge", "histogram", "summary", "untyped", "unknown", "info", "stateset"];
                    if !known.contains(&tail) {
                        return Err(at(format!("unknown type {tail:?}")));
                    }
                    if exposition.types.insert(name.to_owned(), tail.to_owned()).is_some() {
                        return Err(at(format!("family {name} declared twice")));
                    }
                }
                "UNIT" => {
                    if !name.ends_with(&format!("_{tail}")) {
                        return Err(at(format!("family {name} does not end in its unit {tail}")));
                    }
                    exposition.units.insert(name.to_owned(), tail.to_owned());
                }
                _ if flavor == Flavor::Prometheus => {}
                _ => return Err(at(format!("unknown descriptor {keyword}"))),
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            if flavor == Flavor::OpenMetrics {
                return Err(at("blank line or bare comment".to_owned()));
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".to_owned()))?;
        let name = &line[..name_end];
        if !valid_metric_name(name) {
            return Err(at(format!("bad metric name {name:?}")));
        }
        let (labels, rest) = parse_labels(&line[name_end..]).map_err(at)?;
        let mut fields = rest.trim_start().split(' ');
        let value = parse_value(fields.next().unwrap_or_default()).map_err(at)?;
        if let Some(timestamp) = fields.next()
            && !timestamp.is_empty()
            && timestamp != "#"
        {
            timestamp.parse::<f64>().map_err(|e| at(format!("timestamp: {e}")))?;
        }
        let family = family_of(name, &exposition.types, flavor)
            .ok_or_else(|| at(format!("sample {name} of no declared family")))?;
        if name.ends_with("_bucket") && !labels.contains_key("le") {
            return Err(at("bucket without le".to_owned()));
        }
        exposition.samples.push(Sample { name: name.to_owned(), labels, value, family });
    }
    if flavor == Flavor::OpenMetrics && !eof {
        return Err("no # EOF".to_owned());
    }
    check_histograms(&exposition)?;
    Ok(exposition)
}

/// Buckets cumulative and the `+Inf` bucket equal to `_count`, per label set.
fn check_histograms(exposition: &Exposition) -> Result<(), String> {
    for (family, kind) in &exposition.types {
        if kind != "histogram" {
            continue;
        }
        let mut last = f64::NEG_INFINITY;
        let mut inf = None;
        for sample in exposition.samples.iter().filter(|s| s.name == format!("{family}_bucket")) {
            if sample.value < last {
                return Err(format!("{family}: buckets not cumulative"));
            }
            last = sample.value;
            if sample.labels.get("le").map(String::as_str) == Some("+Inf") {
                inf = Some(sample.value);
                last = f64::NEG_INFINITY;
            }
        }
        let count = exposition.samples.iter().find(|s| s.name == format!("{family}_count")).map(|s| s.value);
        if inf != count {
            return Err(format!("{family}: +Inf bucket {inf:?} is not _count {count:?}"));
        }
    }
    Ok(())
}

/// The project's naming rules: every family starts with `prefix`;
/// counters end in `_total` (as declared in 0.0.4, as sampled in
/// OpenMetrics), and gauges and histograms end in one of `units`.
pub fn check_names(exposition: &Exposition, flavor: Flavor, prefix: &str, units: &[&str]) -> Result<(), String> {
    for (family, kind) in &exposition.types {
        if !family.starts_with(prefix) {
            return Err(format!("{family} does not start with {prefix}"));
        }
        match kind.as_str() {
            "counter" => {
                let counted = match flavor {
                    Flavor::Prometheus => family.ends_with("_total"),
                    Flavor::OpenMetrics => {
                        exposition.samples.iter().filter(|s| &s.family == family).all(|s| s.name.ends_with("_total"))
                    }
                };
                if !counted {
                    return Err(format!("counter {family} does not end in _total"));
                }
            }
            _ => {
                if !units.iter().any(|unit| family.ends_with(&format!("_{unit}"))) {
                    return Err(format!("{kind} {family} does not end in a unit ({units:?})"));
                }
            }
        }
    }
    Ok(())
}

/// GET `path` from `address` over plain HTTP/1.1 with `accept`; returns
/// (status, content type, body).
pub fn http_get(address: std::net::SocketAddr, path: &str, accept: &str) -> std::io::Result<(u16, String, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&address, std::time::Duration::from_secs(5))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8(response).map_err(|e| std::io::Error::other(e.to_string()))?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(|| std::io::Error::other("no header end"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    let mut content_type = String::new();
    let mut chunked = false;
    for line in lines {
        let (key, value) = line.split_once(':').unwrap_or((line, ""));
        match key.to_ascii_lowercase().as_str() {
            "content-type" => content_type = value.trim().to_owned(),
            "transfer-encoding" => chunked = value.trim().eq_ignore_ascii_case("chunked"),
            _ => {}
        }
    }
    let body = if chunked { dechunk(body)? } else { body.to_owned() };
    Ok((status, content_type, body))
}

fn dechunk(mut body: &str) -> std::io::Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").ok_or_else(|| std::io::Error::other("bad chunk"))?;
        let size = usize::from_str_radix(size.trim(), 16).map_err(|e| std::io::Error::other(e.to_string()))?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..size).ok_or_else(|| std::io::Error::other("short chunk"))?);
        body = rest.get(size + 2..).ok_or_else(|| std::io::Error::other("short chunk"))?;
    }
}
