//! Durations ("100ms", "2s") and sizes ("64MiB") as they are written in the config.

/// Serde support for `Duration` fields written as "100ms", "2s", "1m 30s".
pub mod duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Parses a duration such as "100ms" or "2s".
    pub fn parse(s: &str) -> Result<Duration, String> {
        humantime::parse_duration(s.trim())
            .map_err(|e| format!("invalid duration {s:?} ({e}); expected e.g. \"100ms\", \"2s\""))
    }

    /// Deserializes a duration from a string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }

    /// Serializes a duration as a string.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

/// Serde support for byte sizes written as "64MiB", "512KiB", "1GB" or a plain number.
pub mod size {
    use serde::{Deserialize, Deserializer};

    /// Parses a size such as "64MiB" into bytes.
    pub fn parse(s: &str) -> Result<u64, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '_' || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let num: f64 = num
            .replace('_', "")
            .parse()
            .map_err(|_| format!("invalid size {s:?}; expected e.g. \"64MiB\""))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            other => {
                return Err(format!(
                    "invalid size unit {other:?} in {s:?}; expected B, KiB, MiB, GiB, KB, MB or GB"
                ));
            }
        };
        Ok((num * mult as f64) as u64)
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u64),
        S(String),
    }

    /// Deserializes a size from a string or an integer number of bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(n),
            Raw::S(s) => parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(
            duration::parse("100ms").unwrap(),
            Duration::from_millis(100)
        );
        assert_eq!(duration::parse("2s").unwrap(), Duration::from_secs(2));
        assert!(duration::parse("fast").unwrap_err().contains("\"fast\""));
    }

    #[test]
    fn sizes() {
        assert_eq!(size::parse("64MiB").unwrap(), 64 << 20);
        assert_eq!(size::parse("512 KiB").unwrap(), 512 << 10);
        assert_eq!(size::parse("1000").unwrap(), 1000);
        assert_eq!(size::parse("1GB").unwrap(), 1_000_000_000);
        assert!(size::parse("12 parsecs").unwrap_err().contains("parsecs"));
    }
}
