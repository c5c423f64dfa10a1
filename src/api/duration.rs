//! Go-style durations (`5s`, `2m`, `1h30m`, `250ms`) as they appear in the CRDs.
//!
//! The API server enforces the grammar at admission (a CEL rule on every duration field), so a
//! value that reaches us has already been validated; parsing here exists for `standalone`, where
//! the same YAML is read without an API server.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Grammar accepted at admission: one or more `<integer><unit>` with units ms, s, m, h.
pub const DURATION_PATTERN: &str = "^([0-9]+(ms|s|m|h))+$";

/// The longest duration any field accepts (a retry delay, say); fields that mean less have
/// lower limits of their own. Bounded so no setting of one tenant can overflow the time
/// arithmetic of a claim, a retry or a breaker that every tenant shares.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(std::time::Duration);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {0:?}: use a number with a unit, such as 250ms, 5s, 2m, 1h or 1h30m")]
pub struct ParseDurationError(String);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    pub const fn from_millis(millis: u64) -> Self {
        Self(std::time::Duration::from_millis(millis))
    }

    pub const fn get(self) -> std::time::Duration {
        self.0
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Self(d)
    }
}

impl FromStr for Duration {
    type Err = ParseDurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || ParseDurationError(text.to_owned());
        let mut total = std::time::Duration::ZERO;
        let mut rest = text;
        if rest.is_empty() {
            return Err(invalid());
        }
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(invalid());
            }
            let value: u64 = rest[..digits].parse().map_err(|_| invalid())?;
            rest = &rest[digits..];
            let (unit_millis, unit_len) = if rest.starts_with("ms") {
                (1, 2)
            } else if rest.starts_with('s') {
                (1_000, 1)
            } else if rest.starts_with('m') {
                (60_000, 1)
            } else if rest.starts_with('h') {
                (3_600_000, 1)
            } else {
                return Err(invalid());
            };
            rest = &rest[unit_len..];
            let millis = value.checked_mul(unit_millis).ok_or_else(invalid)?;
            total = total
                .checked_add(std::time::Duration::from_millis(millis))
                .ok_or_else(invalid)?;
        }
        Ok(Self(total))
    }
}

impl fmt::Display for Duration {
    /// Canonical Go-style rendering: `1h30m`, `45s`, `250ms`, `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut millis = self.0.as_millis();
        if millis == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
            if millis >= size {
                write!(f, "{}{unit}", millis / size)?;
                millis %= size;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<str>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // A CEL rule rather than `pattern`, so the rejection says what a duration looks like
        // instead of quoting a regular expression.
        json_schema!({
            "type": "string",
            "maxLength": 32,
            "x-kubernetes-validations": [{
                "rule": format!("self.matches('{DURATION_PATTERN}')"),
                "message": "must be a duration such as 250ms, 5s, 2m, 1h or 1h30m",
            }, {
                "rule": at_most_rule("self", MAX_DURATION),
                "message": format!("must be at most {MAX_DURATION}"),
            }],
        })
    }
}

/// A CEL rule: the duration `expression` is at most `max` (true for text that is not a duration,
/// which the grammar rule refuses with its own message).
pub fn at_most_rule(expression: &str, max: Duration) -> String {
    format!("!{expression}.matches('{DURATION_PATTERN}') || duration({expression}) <= duration('{max}')")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_style_durations() {
        assert_eq!("5s".parse(), Ok(Duration::from_secs(5)));
        assert_eq!("2m".parse(), Ok(Duration::from_secs(120)));
        assert_eq!("1h30m".parse(), Ok(Duration::from_secs(5400)));
        assert_eq!("250ms".parse(), Ok(Duration::from_millis(250)));
        assert_eq!("1m500ms".parse(), Ok(Duration::from_millis(60_500)));
    }

    #[test]
    fn rejects_what_admission_rejects() {
        for bad in ["", "5", "s", "5x", "1.5h", "-5s", "5 s", "99999999999999999999h"] {
            assert!(bad.parse::<Duration>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn renders_canonically_and_round_trips() {
        for (text, canonical) in [
            ("90s", "1m30s"),
            ("1h", "1h"),
            ("1500ms", "1s500ms"),
            ("0s", "0s"),
        ] {
            let parsed: Duration = text.parse().expect("valid duration");
            assert_eq!(parsed.to_string(), canonical);
            assert_eq!(canonical.parse::<Duration>(), Ok(parsed));
        }
    }
}
