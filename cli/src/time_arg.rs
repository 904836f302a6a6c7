//! Times on the command line: RFC 3339 as the API takes them, or an age
//! (`30s`, `15m`, `2h`, `7d`, `1w`) meaning that long before now. Also how
//! tables show times: local-free RFC 3339 and "ago".

use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

/// Parses `--from`/`--to` values into RFC 3339 (UTC) for the API.
pub fn parse_time_arg(text: &str) -> Result<String, String> {
    parse_time_at(text, OffsetDateTime::now_utc())
}

/// [`parse_time_arg`] with "now" given.
fn parse_time_at(text: &str, now: OffsetDateTime) -> Result<String, String> {
    let text = text.trim();
    if let Ok(time) = OffsetDateTime::parse(text, &Rfc3339) {
        return format_utc(time);
    }
    let age = parse_age(text).ok_or_else(|| {
        format!("{text:?} is neither an RFC 3339 time (2026-11-30T12:00:00Z) nor an age (30m, 2h, 7d)")
    })?;
    let time = now.checked_sub(age).ok_or_else(|| format!("{text:?} reaches too far back"))?;
    format_utc(time)
}

fn format_utc(time: OffsetDateTime) -> Result<String, String> {
    time.to_offset(time::UtcOffset::UTC).format(&Rfc3339).map_err(|error| format!("cannot format the time: {error}"))
}

/// `<digits><unit>` with unit s, m, h, d or w.
fn parse_age(text: &str) -> Option<Duration> {
    let unit_at = text.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = text.split_at(unit_at);
    let count: i64 = digits.parse().ok()?;
    let seconds_per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return None,
    };
    count.checked_mul(seconds_per).map(Duration::seconds)
}

/// How long before `now` an RFC 3339 time was, for tables: `12s ago`,
/// `5m ago`, `3h ago`, `2d ago`; the text itself when it does not parse.
pub fn ago(text: &str, now: OffsetDateTime) -> String {
    let Ok(then) = OffsetDateTime::parse(text, &Rfc3339) else { return text.to_owned() };
    let seconds = (now - then).whole_seconds();
    if seconds < 0 {
        return "just now".to_owned();
    }
    match seconds {
        0..60 => format!("{seconds}s ago"),
        60..3_600 => format!("{}m ago", seconds / 60),
        3_600..86_400 => format!("{}h ago", seconds / 3_600),
        _ => format!("{}d ago", seconds / 86_400),
    }
}

/// An RFC 3339 time cut to whole seconds for a table (`2026-11-30 12:00:05Z`).
pub fn short_time(text: &str) -> String {
    match OffsetDateTime::parse(text, &Rfc3339) {
        Ok(time) => {
            let time = time.to_offset(time::UtcOffset::UTC);
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
                time.year(),
                u8::from(time.month()),
                time.day(),
                time.hour(),
                time.minute(),
                time.second()
            )
        }
        Err(_) => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn ages_and_rfc3339() {
        let now = datetime!(2026-11-30 12:00:00 UTC);
        assert_eq!(parse_time_at("2h", now).as_deref(), Ok("2026-11-30T10:00:00Z"));
        assert_eq!(parse_time_at("7d", now).as_deref(), Ok("2026-11-23T12:00:00Z"));
        assert_eq!(parse_time_at("2026-11-30T14:00:00+02:00", now).as_deref(), Ok("2026-11-30T12:00:00Z"));
        assert!(parse_time_at("yesterday", now).is_err());
        assert!(parse_time_at("5y", now).is_err());
        assert!(parse_time_at("99999999999999999999d", now).is_err());
    }

    #[test]
    fn tables_show_ages() {
        let now = datetime!(2026-11-30 12:00:00 UTC);
        assert_eq!(ago("2026-11-30T11:59:30Z", now), "30s ago");
        assert_eq!(ago("2026-11-30T09:00:00Z", now), "3h ago");
        assert_eq!(ago("2026-11-28T12:00:00Z", now), "2d ago");
        assert_eq!(ago("not a time", now), "not a time");
        assert_eq!(short_time("2026-11-30T12:00:05.123456789Z"), "2026-11-30 12:00:05Z");
    }
}
