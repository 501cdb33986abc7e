//! Human-written durations (`30s`, `5m`, `7d`) and sizes (`500MiB`, `50GiB`).
//!
//! Both deserialize from strings and reject anything else with a message saying what form
//! is expected, so a typo surfaces at `sluice config check` with its line and column.

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer};

/// A duration written as `<number><unit>`, unit one of `ms`, `s`, `m`, `h`, `d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// The standard-library duration.
    pub fn get(self) -> std::time::Duration {
        self.0
    }
    /// A duration of `s` seconds.
    pub const fn from_secs(s: u64) -> Self {
        Duration(std::time::Duration::from_secs(s))
    }
    /// Whole seconds, rounded up: for settings that only take seconds, so that `"500ms"`
    /// is not silently `0`.
    pub fn as_secs_ceil(self) -> u64 {
        self.0.as_secs() + u64::from(self.0.subsec_nanos() > 0)
    }
}

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            format!("invalid duration {s:?}: expected e.g. \"30s\", \"5m\", \"7d\"")
        })?;
        let ms = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => {
                return Err(format!(
                    "invalid duration {s:?}: unit must be one of ms, s, m, h, d"
                ))
            }
        };
        n.checked_mul(ms)
            .map(|v| Duration(std::time::Duration::from_millis(v)))
            .ok_or_else(|| format!("duration {s:?} is too large"))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0.as_millis())
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// A size in bytes written as `<number><unit>`: `B`, `KB`/`MB`/`GB`/`TB` (powers of 1000) or
/// `KiB`/`MiB`/`GiB`/`TiB` (powers of 1024). The number may have a fraction (`1.5GiB`),
/// rounded down to whole bytes; a plain byte count must be whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let bad = || format!("invalid size {s:?}: expected e.g. \"500MiB\", \"1.5GiB\", \"2GB\"");
        let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
        if whole.is_empty() || num.ends_with('.') || frac.contains('.') || frac.len() > 12 {
            return Err(bad());
        }
        let n: u64 = whole.parse().map_err(|_| bad())?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            _ => {
                return Err(format!(
                    "invalid size {s:?}: unit must be one of B, KB, MB, GB, TB, KiB, MiB, GiB, TiB"
                ))
            }
        };
        if !frac.is_empty() && mult == 1 {
            return Err(format!(
                "invalid size {s:?}: a number of bytes is whole (write e.g. \"1.5KiB\")"
            ));
        }
        // frac has at most 12 digits: frac × mult < 10^12 × 2^40 fits in u128.
        let frac_bytes = if frac.is_empty() {
            0
        } else {
            let f: u128 = frac.parse().map_err(|_| bad())?;
            u64::try_from(f * u128::from(mult) / 10u128.pow(frac.len() as u32)).unwrap_or(u64::MAX)
        };
        n.checked_mul(mult)
            .and_then(|b| b.checked_add(frac_bytes))
            .map(ByteSize)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_reject_garbage() {
        assert_eq!("30s".parse::<Duration>().unwrap().get().as_secs(), 30);
        assert_eq!("5m".parse::<Duration>().unwrap().get().as_secs(), 300);
        assert_eq!("7d".parse::<Duration>().unwrap().get().as_secs(), 7 * 86400);
        assert_eq!("250ms".parse::<Duration>().unwrap().get().as_millis(), 250);
        assert!("5".parse::<Duration>().is_err());
        assert!("5x".parse::<Duration>().is_err());
        assert!("m".parse::<Duration>().is_err());
    }

    #[test]
    fn sizes_parse_binary_and_decimal_units() {
        assert_eq!("500MiB".parse::<ByteSize>().unwrap().0, 500 << 20);
        assert_eq!("50GiB".parse::<ByteSize>().unwrap().0, 50 << 30);
        assert_eq!("2GB".parse::<ByteSize>().unwrap().0, 2_000_000_000);
        assert_eq!("1024".parse::<ByteSize>().unwrap().0, 1024);
        assert!("12 parsecs".parse::<ByteSize>().is_err());
    }

    #[test]
    fn sizes_may_have_a_fraction_of_a_unit_but_not_of_a_byte() {
        assert_eq!("1.5GiB".parse::<ByteSize>().unwrap().0, 3 << 29);
        assert_eq!("0.5KB".parse::<ByteSize>().unwrap().0, 500);
        assert_eq!("2.25 MiB".parse::<ByteSize>().unwrap().0, 9 << 18);
        assert_eq!("0.1KiB".parse::<ByteSize>().unwrap().0, 102);
        let e = "1.5".parse::<ByteSize>().unwrap_err();
        assert!(e.contains("whole"), "{e}");
        assert!("1.5B".parse::<ByteSize>().unwrap_err().contains("whole"));
        for bad in [".5GiB", "1.GiB", "1.2.3GiB", "1..5GiB", "GiB"] {
            let e = bad.parse::<ByteSize>().unwrap_err();
            assert!(e.contains("expected e.g."), "{bad}: {e}");
        }
    }

    #[test]
    fn whole_seconds_round_up() {
        assert_eq!("500ms".parse::<Duration>().unwrap().as_secs_ceil(), 1);
        assert_eq!("1001ms".parse::<Duration>().unwrap().as_secs_ceil(), 2);
        assert_eq!("5s".parse::<Duration>().unwrap().as_secs_ceil(), 5);
        assert_eq!("0s".parse::<Duration>().unwrap().as_secs_ceil(), 0);
    }
}
