//! Time stamps of log lines.
use chrono::{DateTime, Local, SecondsFormat, Utc};

/// Time stamps: RFC 3339 with microseconds, never going backwards within
/// a run (so logs stay sorted for binary search even if the clock steps).
pub struct Clock {
    local: bool,
    last_micros: i64,
    text: String,
}

impl Clock {
    /// `local`: local zone with its offset, else UTC.
    pub fn new(local: bool) -> Self {
        Clock {
            local,
            last_micros: 0,
            text: String::new(),
        }
    }

    /// The last stamp (empty before the first).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Stamps `at`, or the last stamp if `at` is earlier (the clock was
    /// stepped back).
    pub fn stamp(&mut self, at: DateTime<Utc>) -> &str {
        let micros = at.timestamp_micros().max(self.last_micros);
        if micros != self.last_micros || self.text.is_empty() {
            self.last_micros = micros;
            let t = DateTime::from_timestamp_micros(micros).unwrap_or(at);
            self.text = if self.local {
                t.with_timezone(&Local)
                    .to_rfc3339_opts(SecondsFormat::Micros, false)
            } else {
                t.to_rfc3339_opts(SecondsFormat::Micros, false)
            };
        }
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(micros: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(micros).unwrap()
    }

    #[test]
    fn time_never_goes_backwards() {
        let mut c = Clock::new(false);
        let t0 = 1_700_000_000_000_000;
        assert_eq!(c.stamp(at(t0)), "2023-11-14T22:13:20.000000+00:00");
        // The clock steps back by a second: the stamp stays where it was.
        assert_eq!(
            c.stamp(at(t0 - 1_000_000)),
            "2023-11-14T22:13:20.000000+00:00"
        );
        assert_eq!(c.stamp(at(t0 + 1)), "2023-11-14T22:13:20.000001+00:00");
        let mut last = String::new();
        for step in [5i64, -3, 0, 7, -100, 2] {
            let s = c.stamp(at(t0 + step)).to_string();
            assert!(s >= last, "{s} < {last}");
            last = s;
        }
        assert_eq!(c.text(), last);
    }

    #[test]
    fn local_time_carries_an_offset() {
        let mut c = Clock::new(true);
        let s = c.stamp(at(1_700_000_000_000_000)).to_string();
        assert!(
            s.contains('+') || s.rfind('-').is_some_and(|i| i > 10),
            "{s}"
        );
        assert_eq!(s.len(), "2023-11-14T22:13:20.000000+00:00".len());
    }
}
