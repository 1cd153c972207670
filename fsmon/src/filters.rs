//! Filter values users type, parsed once and shared by the CLI and the daemon.
//!
//! - [`SizeFilter`]: `>=1MB`, `<5GB`, `=0`... for `add --size` and the clean
//!   size limit. Units are powers of 1024 (`KB` = 1024 bytes).
//! - [`TimeFilter`]: one `-t` value (`>1h`, `>=2026-05-01`, `<now`...), kept
//!   unresolved until the caller knows "now" and the log's time zone.
//! - [`TimeRange`]: the window several `-t` values select, as instants.
//!
//! Every parser returns `Error::Invalid` with a one-line message that names
//! the bad value and lists the accepted forms.
use std::{fmt, str::FromStr};

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, TimeDelta, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

use crate::error::escape_controls as shown;

// ---------------------------------------------------------------------------
// Comparison operators
// ---------------------------------------------------------------------------

/// A comparison operator as written in front of a filter value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Eq => "=",
        }
    }

    /// Splits a leading operator off `s`. Two-character operators are tried
    /// first so `>=` is not read as `>` followed by `=...`.
    fn split(s: &str) -> Option<(Op, &str)> {
        const OPS: [(&str, Op); 5] = [
            (">=", Op::Ge),
            ("<=", Op::Le),
            (">", Op::Gt),
            ("<", Op::Lt),
            ("=", Op::Eq),
        ];
        OPS.iter()
            .find_map(|&(text, op)| s.strip_prefix(text).map(|rest| (op, rest.trim_start())))
    }

    fn holds<T: PartialOrd>(self, value: T, limit: T) -> bool {
        match self {
            Op::Gt => value > limit,
            Op::Ge => value >= limit,
            Op::Lt => value < limit,
            Op::Le => value <= limit,
            Op::Eq => value == limit,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------
// Sizes
// ---------------------------------------------------------------------------

const KB: u64 = 1 << 10;
const MB: u64 = 1 << 20;
const GB: u64 = 1 << 30;
const TB: u64 = 1 << 40;

/// Units from largest to smallest; the order [`format_size_exact`] tries them.
const SIZE_UNITS: [(&str, u64); 5] = [("TB", TB), ("GB", GB), ("MB", MB), ("KB", KB), ("B", 1)];

const SIZE_FORMS: &str = "expected an operator (>, >=, <, <=, =) and a size such as \
                          >=1MB, <500KB, =0, >1.5GB (units B, KB, MB, GB, TB; KB = 1024 bytes; \
                          a bare number is bytes)";

/// A file-size condition such as `>=1MB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SizeFilter {
    op: Op,
    bytes: u64,
}

impl SizeFilter {
    pub fn new(op: Op, bytes: u64) -> SizeFilter {
        SizeFilter { op, bytes }
    }

    pub fn parse(text: &str) -> Result<SizeFilter> {
        let bad = |why: &str| {
            Error::invalid(format!(
                "invalid size filter '{}': {why}; {SIZE_FORMS}",
                shown(text)
            ))
        };
        let s = text.trim();
        if s.is_empty() {
            return Err(bad("empty"));
        }
        let (op, rest) = Op::split(s).ok_or_else(|| bad("missing operator"))?;
        let bytes = parse_size(rest).map_err(bad)?;
        Ok(SizeFilter { op, bytes })
    }

    /// Whether a file of `size` bytes passes the filter.
    pub fn matches(&self, size: u64) -> bool {
        self.op.holds(size, self.bytes)
    }

    /// The size in the filter, in bytes: the limit when used as a clean size
    /// (`size = ">=1GB"` means "keep the log under 1 GB").
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn op(&self) -> Op {
        self.op
    }
}

/// Parses `1MB`, `1.5 gb`, `1024`, `0`: a non-negative decimal and an
/// optional unit. Fractions are rounded to the nearest byte.
fn parse_size(s: &str) -> std::result::Result<u64, &'static str> {
    let s = s.trim();
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = (&s[..digits_end], s[digits_end..].trim());
    if number.is_empty() {
        return Err(if s.is_empty() {
            "missing size"
        } else {
            "size must start with a number"
        });
    }
    let multiplier = SIZE_UNITS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(unit))
        .map(|&(_, m)| m)
        .or(unit.is_empty().then_some(1))
        .ok_or("unknown unit")?;

    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if int_part.is_empty()
        || frac_part.contains('.')
        || (number.contains('.') && frac_part.is_empty())
    {
        return Err("malformed number");
    }
    // Exact integer arithmetic: 1.1KB is 1126 bytes, not 1126.4000000001.
    if frac_part.len() > 9 {
        return Err("too many decimals");
    }
    let too_big = "size too large";
    let int: u128 = int_part.parse().map_err(|_| too_big)?;
    let frac: u128 = if frac_part.is_empty() {
        0
    } else {
        frac_part.parse().map_err(|_| "malformed number")?
    };
    let scale = 10u128.pow(frac_part.len() as u32);
    let m = u128::from(multiplier);
    let total = int
        .checked_mul(m)
        .and_then(|whole| whole.checked_add((frac * m + scale / 2) / scale))
        .ok_or(too_big)?;
    u64::try_from(total).map_err(|_| too_big)
}

/// The shortest text that parses back to exactly `bytes`: `1MB`, `1.5MB`,
/// `1500B`. Used for the canonical form of a [`SizeFilter`].
fn format_size_exact(bytes: u64) -> String {
    for &(unit, mult) in &SIZE_UNITS {
        if bytes < mult && mult > 1 {
            continue;
        }
        if bytes.is_multiple_of(mult) {
            return format!("{}{unit}", bytes / mult);
        }
        for decimals in 1..=2 {
            let text = format!("{:.*}", decimals, bytes as f64 / mult as f64);
            if parse_size(&format!("{text}{unit}")) == Ok(bytes) {
                return format!("{text}{unit}");
            }
        }
    }
    format!("{bytes}B")
}

/// A size for people: `512 B`, `1.5 MB`, `240.0 MB` (powers of 1024).
pub fn format_size(bytes: u64) -> String {
    match SIZE_UNITS
        .iter()
        .find(|&&(_, mult)| bytes >= mult && mult > 1)
    {
        Some(&(unit, mult)) => format!("{:.1} {unit}", bytes as f64 / mult as f64),
        None => format!("{bytes} B"),
    }
}

impl fmt::Display for SizeFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.op, format_size_exact(self.bytes))
    }
}

impl FromStr for SizeFilter {
    type Err = Error;
    fn from_str(s: &str) -> Result<SizeFilter> {
        SizeFilter::parse(s)
    }
}

impl Serialize for SizeFilter {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SizeFilter {
    fn deserialize<D: Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<SizeFilter, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
        SizeFilter::parse(&text).map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------
// Times
// ---------------------------------------------------------------------------

const TIME_FORMS: &str = "expected >, >=, < or <= followed by a duration ago (30s, 30m, 1h, 7d, 2w), \
                          now, a date (2026-05-01), a local date and time (2026-05-01 10:00, \
                          2026-05-01T10:00:00) or an RFC 3339 time (2026-05-01T10:00:00+02:00)";

/// Which end of the window a time filter sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `>` or `>=`: keep events after the time.
    Since,
    /// `<` or `<=`: keep events before the time.
    Until,
}

/// The value of a time filter before it is tied to a moment and a zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeValue {
    /// `30m`, `7d`: that long before now.
    Ago(TimeDelta),
    Now,
    /// A date or date-time without offset: read in the log's zone.
    Local(NaiveDateTime),
    /// A full RFC 3339 time: an instant already.
    Exact(DateTime<FixedOffset>),
}

/// One `-t` value: an operator and a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeFilter {
    op: Op,
    value: TimeValue,
    /// What the user typed (trimmed, control characters escaped), for
    /// messages.
    text: String,
}

/// One end of a [`TimeRange`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    pub at: DateTime<Utc>,
    /// Whether an event exactly at `at` is inside.
    pub inclusive: bool,
}

impl Bound {
    pub fn inclusive(at: DateTime<Utc>) -> Bound {
        Bound {
            at,
            inclusive: true,
        }
    }
}

impl TimeFilter {
    pub fn parse(text: &str) -> Result<TimeFilter> {
        let bad = |why: &str| {
            Error::invalid(format!(
                "invalid time filter '{}': {why}; {TIME_FORMS}",
                shown(text)
            ))
        };
        let s = text.trim();
        if s.is_empty() {
            return Err(bad("empty"));
        }
        let (op, rest) = match Op::split(s) {
            Some((Op::Eq, _)) => return Err(bad("'=' is not a time operator")),
            Some(split) => split,
            None => return Err(bad("missing operator")),
        };
        if rest.is_empty() {
            return Err(bad("missing time after the operator"));
        }
        let value = parse_time_value(rest).map_err(bad)?;
        Ok(TimeFilter {
            op,
            value,
            text: shown(s),
        })
    }

    pub fn side(&self) -> Side {
        match self.op {
            Op::Gt | Op::Ge => Side::Since,
            _ => Side::Until,
        }
    }

    pub fn value(&self) -> TimeValue {
        self.value
    }

    /// Whether the value depends on the log's zone (a date or a date-time
    /// written without offset).
    pub fn needs_zone(&self) -> bool {
        matches!(self.value, TimeValue::Local(_))
    }

    /// Ties the filter to an instant: relative values count back from `now`,
    /// dates without offset are read in `zone` (the log's zone).
    pub fn resolve(&self, now: DateTime<Utc>, zone: FixedOffset) -> Result<Bound> {
        let at = match self.value {
            TimeValue::Now => now,
            TimeValue::Ago(delta) => now.checked_sub_signed(delta).ok_or_else(|| {
                Error::invalid(format!("time filter '{}' reaches too far back", self.text))
            })?,
            // A fixed offset has exactly one reading for every local time.
            TimeValue::Local(naive) => zone
                .from_local_datetime(&naive)
                .single()
                .ok_or_else(|| {
                    Error::invalid(format!("time filter '{}' is out of range", self.text))
                })?
                .with_timezone(&Utc),
            TimeValue::Exact(t) => t.with_timezone(&Utc),
        };
        Ok(Bound {
            at,
            inclusive: matches!(self.op, Op::Ge | Op::Le),
        })
    }
}

fn parse_time_value(s: &str) -> std::result::Result<TimeValue, &'static str> {
    if s.eq_ignore_ascii_case("now") {
        return Ok(TimeValue::Now);
    }
    if s.starts_with(['>', '<', '=']) {
        return Err("more than one operator");
    }
    // Relative: digits then one unit letter (ASCII, so one byte).
    if let Some(unit) = s.chars().last()
        && unit.is_ascii_alphabetic()
        && s.len() > 1
        && s[..s.len() - 1].bytes().all(|b| b.is_ascii_digit())
    {
        let seconds_per_unit: i64 = match unit.to_ascii_lowercase() {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err("unknown duration unit (use s, m, h, d or w)"),
        };
        let count: i64 = s[..s.len() - 1].parse().map_err(|_| "duration too large")?;
        return count
            .checked_mul(seconds_per_unit)
            .and_then(TimeDelta::try_seconds)
            .map(TimeValue::Ago)
            .ok_or("duration too large");
    }
    // Absolute, with offset: an instant.
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(TimeValue::Exact(t));
    }
    // Absolute, without offset: date, or date and time with `T` or a space.
    if let Ok(date) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(TimeValue::Local(date.and_time(chrono::NaiveTime::MIN)));
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, format) {
            return Ok(TimeValue::Local(t));
        }
    }
    if s.starts_with(|c: char| c.is_ascii_digit()) && s.contains('-') {
        return Err("not a valid date or time");
    }
    Err("unrecognized time")
}

impl fmt::Display for TimeFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for TimeFilter {
    type Err = Error;
    fn from_str(s: &str) -> Result<TimeFilter> {
        TimeFilter::parse(s)
    }
}

/// The window of time selected by `-t` filters: at most one lower and one
/// upper bound. The default selects everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimeRange {
    pub since: Option<Bound>,
    pub until: Option<Bound>,
}

impl TimeRange {
    /// Everything.
    pub const ALL: TimeRange = TimeRange {
        since: None,
        until: None,
    };

    /// Combines `-t` values. Two lower (or two upper) bounds, or a window
    /// that selects nothing, are errors: they are almost always typos.
    pub fn new(filters: &[TimeFilter], now: DateTime<Utc>, zone: FixedOffset) -> Result<TimeRange> {
        let mut range = TimeRange::ALL;
        let mut since_text: Option<&TimeFilter> = None;
        let mut until_text: Option<&TimeFilter> = None;
        for filter in filters {
            let bound = filter.resolve(now, zone)?;
            let (slot, seen) = match filter.side() {
                Side::Since => (&mut range.since, &mut since_text),
                Side::Until => (&mut range.until, &mut until_text),
            };
            if let Some(previous) = seen {
                let which = if filter.side() == Side::Since {
                    "lower (> or >=)"
                } else {
                    "upper (< or <=)"
                };
                return Err(Error::invalid(format!(
                    "time filters '{previous}' and '{filter}' are both {which} bounds; \
                     give at most one > or >= and one < or <="
                )));
            }
            *slot = Some(bound);
            *seen = Some(filter);
        }
        if let (Some(since), Some(until), Some(a), Some(b)) =
            (range.since, range.until, since_text, until_text)
        {
            let empty = since.at > until.at
                || (since.at == until.at && !(since.inclusive && until.inclusive));
            if empty {
                return Err(Error::invalid(format!(
                    "time filters '{a}' and '{b}' select nothing: the lower bound is not before the upper bound"
                )));
            }
        }
        Ok(range)
    }

    pub fn is_all(&self) -> bool {
        self.since.is_none() && self.until.is_none()
    }

    /// Whether an event at `t` is inside the window.
    pub fn contains<Tz: TimeZone>(&self, t: &DateTime<Tz>) -> bool {
        self.after_since(t) && !self.past_until(t)
    }

    /// `t` satisfies the lower bound.
    pub fn after_since<Tz: TimeZone>(&self, t: &DateTime<Tz>) -> bool {
        match self.since {
            None => true,
            Some(b) if b.inclusive => *t >= b.at,
            Some(b) => *t > b.at,
        }
    }

    /// `t` is beyond the upper bound (the window has ended).
    pub fn past_until<Tz: TimeZone>(&self, t: &DateTime<Tz>) -> bool {
        match self.until {
            None => false,
            Some(b) if b.inclusive => *t > b.at,
            Some(b) => *t >= b.at,
        }
    }
}

// ---------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------

/// Whether `path` is `prefix` or lies under it, by whole components:
/// `/data/a` covers `/data/a` and `/data/a/x`, not `/data/ab`. Trailing
/// slashes on the prefix are ignored, so `/` covers every absolute path.
pub fn path_has_prefix(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(s: &str) -> SizeFilter {
        SizeFilter::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn size_forms() {
        assert_eq!(size(">=1MB"), SizeFilter::new(Op::Ge, MB));
        assert_eq!(size(">1KB"), SizeFilter::new(Op::Gt, 1024));
        assert_eq!(size("<=10MB"), SizeFilter::new(Op::Le, 10 * MB));
        assert_eq!(size("<5GB"), SizeFilter::new(Op::Lt, 5 * GB));
        assert_eq!(size("=0"), SizeFilter::new(Op::Eq, 0));
        assert_eq!(size(">=1024"), SizeFilter::new(Op::Ge, 1024));
        assert_eq!(size(">=2tb"), SizeFilter::new(Op::Ge, 2 * TB));
        assert_eq!(size(" >= 1.5 mb "), SizeFilter::new(Op::Ge, MB + MB / 2));
        assert_eq!(size(">1.1KB").bytes(), 1126);
        assert_eq!(size(">10B").bytes(), 10);
    }

    #[test]
    fn size_matches() {
        assert!(size(">=1MB").matches(MB));
        assert!(!size(">1MB").matches(MB));
        assert!(size("<1KB").matches(1023));
        assert!(!size("<1KB").matches(1024));
        assert!(size("<=1KB").matches(1024));
        assert!(size("=0").matches(0));
        assert!(!size("=0").matches(1));
    }

    #[test]
    fn size_canonical_text_round_trips() {
        for (input, canonical) in [
            (">=1MB", ">=1MB"),
            (">= 1mb", ">=1MB"),
            (">=1024", ">=1KB"),
            ("=0", "=0B"),
            ("<1.5GB", "<1.5GB"),
            (">1500", ">1500B"),
            (">1.1KB", ">1.1KB"),
            ("<=1048577", "<=1048577B"),
        ] {
            let f = size(input);
            assert_eq!(f.to_string(), canonical, "{input}");
            assert_eq!(size(canonical), f, "{canonical}");
        }
    }

    #[test]
    fn size_serde_is_the_string() {
        let f = size(">=1.5MB");
        assert_eq!(serde_json::to_string(&f).unwrap(), r#"">=1.5MB""#);
        let back: SizeFilter = serde_json::from_str(r#"">= 1536 KB""#).unwrap();
        assert_eq!(back, f);
        let err = serde_json::from_str::<SizeFilter>(r#""1MB""#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid size filter '1MB'"), "{err}");
    }

    #[test]
    fn size_garbage() {
        for bad in [
            "",
            ">",
            "1MB",
            ">=",
            ">=MB",
            ">=1XB",
            ">=-1",
            ">=1..5MB",
            ">=1.MB",
            ">=.5MB",
            ">>1MB",
            ">=1 M B",
            ">=99999999999TB",
            ">=1.0000000001KB",
            "=>1MB",
        ] {
            let err = SizeFilter::parse(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("'{bad}'")), "{bad}: {err}");
            assert!(err.contains("KB = 1024"), "{bad}: {err}");
            assert!(!err.contains('\n'), "{bad}: {err}");
        }
    }

    #[test]
    fn format_size_for_people() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(1023), "1023 B");
        assert_eq!(format_size(1536), "1.5 KB");
        assert_eq!(format_size(240 * MB), "240.0 MB");
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-05-07T12:00:00Z")
            .unwrap()
            .to_utc()
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn bound(s: &str, zone: FixedOffset) -> (Side, Bound) {
        let f = TimeFilter::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        (f.side(), f.resolve(now(), zone).unwrap())
    }

    #[test]
    fn time_relative_and_now() {
        let z = FixedOffset::east_opt(0).unwrap();
        assert_eq!(
            bound(">1h", z),
            (
                Side::Since,
                Bound {
                    at: utc("2026-05-07T11:00:00Z"),
                    inclusive: false
                }
            )
        );
        assert_eq!(bound(">=30m", z).1.at, utc("2026-05-07T11:30:00Z"));
        assert_eq!(
            bound("<30s", z),
            (
                Side::Until,
                Bound {
                    at: utc("2026-05-07T11:59:30Z"),
                    inclusive: false
                }
            )
        );
        assert_eq!(
            bound("<=7d", z).1,
            Bound::inclusive(utc("2026-04-30T12:00:00Z"))
        );
        assert_eq!(bound(">2w", z).1.at, utc("2026-04-23T12:00:00Z"));
        assert_eq!(bound(">2W", z).1.at, utc("2026-04-23T12:00:00Z"));
        assert_eq!(
            bound("<now", z),
            (
                Side::Until,
                Bound {
                    at: now(),
                    inclusive: false
                }
            )
        );
        assert_eq!(bound("< NOW", z).1.at, now());
    }

    #[test]
    fn time_absolute_uses_log_zone_unless_offset_given() {
        let utc0 = FixedOffset::east_opt(0).unwrap();
        let plus2 = FixedOffset::east_opt(2 * 3600).unwrap();
        assert_eq!(
            bound(">=2026-05-01", utc0).1,
            Bound::inclusive(utc("2026-05-01T00:00:00Z"))
        );
        assert_eq!(
            bound(">=2026-05-01", plus2).1.at,
            utc("2026-04-30T22:00:00Z")
        );
        assert_eq!(
            bound(">2026-05-01 10:00", plus2).1.at,
            utc("2026-05-01T08:00:00Z")
        );
        assert_eq!(
            bound(">2026-05-01T10:00", utc0).1.at,
            utc("2026-05-01T10:00:00Z")
        );
        assert_eq!(
            bound(">2026-05-01T10:00:00", plus2).1.at,
            utc("2026-05-01T08:00:00Z")
        );
        assert_eq!(
            bound(">2026-05-01 10:00:00.250", utc0).1.at,
            utc("2026-05-01T10:00:00.25Z")
        );
        // An explicit offset is an instant: the zone does not matter.
        let f = TimeFilter::parse("<2026-05-01T10:00:00+02:00").unwrap();
        assert!(!f.needs_zone());
        assert_eq!(
            f.resolve(now(), utc0).unwrap().at,
            utc("2026-05-01T08:00:00Z")
        );
        assert_eq!(
            f.resolve(now(), plus2).unwrap().at,
            utc("2026-05-01T08:00:00Z")
        );
        assert_eq!(
            bound("<2026-05-01T10:00:00.123456Z", plus2).1.at,
            utc("2026-05-01T10:00:00.123456Z")
        );
        assert_eq!(
            bound("<2026-05-01 10:00:00+02:00", utc0).1.at,
            utc("2026-05-01T08:00:00Z")
        );
        assert!(TimeFilter::parse(">=2026-05-01").unwrap().needs_zone());
        assert_eq!(
            TimeFilter::parse("  >= 2026-05-01 ").unwrap().to_string(),
            ">= 2026-05-01"
        );
    }

    #[test]
    fn time_garbage() {
        for bad in [
            "",
            " ",
            ">",
            ">=",
            ">>1h",
            "1h",
            "now",
            ">=2026-13-01",
            ">5x",
            ">1.5h",
            "=1h",
            "><1h",
            ">-1h",
            ">h",
            ">2026-02-30",
            ">2026-05-01 25:00",
            ">yesterday",
            ">99999999999999999999w",
            ">9999999999999w",
        ] {
            let err = TimeFilter::parse(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("'{bad}'")), "{bad}: {err}");
            assert!(err.contains("30m"), "{bad}: {err}");
            assert!(!err.contains('\n'), "{bad}: {err}");
        }
        // Parses, but the instant cannot be represented.
        let far = TimeFilter::parse(">9999999999w").unwrap();
        assert!(
            far.resolve(now(), FixedOffset::east_opt(0).unwrap())
                .is_err()
        );
    }

    #[test]
    fn path_prefix_whole_components() {
        assert!(path_has_prefix("/data/a", "/data/a"));
        assert!(path_has_prefix("/data/a/x", "/data/a"));
        assert!(path_has_prefix("/data/a/x", "/data/a/"));
        assert!(path_has_prefix("/data/a", "/data/a//"));
        assert!(!path_has_prefix("/data/ab", "/data/a"));
        assert!(!path_has_prefix("/data", "/data/a"));
        assert!(path_has_prefix("/anything", "/"));
        assert!(!path_has_prefix("relative-name", "/"));
    }

    fn range(filters: &[&str]) -> Result<TimeRange> {
        let filters: Vec<TimeFilter> = filters
            .iter()
            .map(|s| TimeFilter::parse(s).unwrap())
            .collect();
        TimeRange::new(&filters, now(), FixedOffset::east_opt(0).unwrap())
    }

    #[test]
    fn time_ranges() {
        let r = range(&[">1h", "<now"]).unwrap();
        assert!(!r.contains(&utc("2026-05-07T11:00:00Z")));
        assert!(r.contains(&utc("2026-05-07T11:00:00.000001Z")));
        assert!(r.contains(&utc("2026-05-07T11:59:59Z")));
        assert!(!r.contains(&now()));
        let r = range(&["<=2026-05-01", ">=2026-04-01"]).unwrap();
        assert!(r.contains(&utc("2026-05-01T00:00:00Z")));
        assert!(r.contains(&utc("2026-04-01T00:00:00Z")));
        assert!(!r.contains(&utc("2026-05-01T00:00:01Z")));
        // Different offsets compare as instants.
        let t = DateTime::parse_from_rfc3339("2026-05-01T01:00:00+02:00").unwrap();
        assert!(r.contains(&t));
        assert!(range(&[]).unwrap().is_all());
        assert!(range(&[">=2026-05-01", "<=2026-05-01"]).is_ok());
    }

    #[test]
    fn time_range_errors() {
        let err = range(&[">1h", ">=2026-05-01"]).unwrap_err().to_string();
        assert!(
            err.contains("'>1h' and '>=2026-05-01' are both lower"),
            "{err}"
        );
        assert!(
            range(&["<1h", "<2h"])
                .unwrap_err()
                .to_string()
                .contains("upper")
        );
        assert!(range(&[">1h", ">1h"]).is_err());
        let err = range(&[">1h", "<2h"]).unwrap_err().to_string();
        assert!(err.contains("select nothing"), "{err}");
        assert!(range(&[">2026-05-01", "<=2026-05-01"]).is_err());
        assert!(range(&[">now", "<now"]).is_err());
    }
}
