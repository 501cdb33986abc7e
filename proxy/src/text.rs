//! Numbers in short strings on the request path without `format!`: a cached hit builds a
//! few keys per request, and `core::fmt` costs several times what copying their parts does
//! (measured with callgrind: a seven-part `format!` took ~2,200 instructions). The parts
//! are joined with `[&str]::concat`, which allocates once at the final size.

/// `n` in decimal, on the stack.
pub struct Decimal {
    digits: [u8; 20],
    start: usize,
}

impl Decimal {
    /// The decimal digits of `n`.
    pub fn new(mut n: u64) -> Decimal {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        Decimal { digits, start }
    }

    /// The digits as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits were written.
        std::str::from_utf8(&self.digits[self.start..]).unwrap_or_default()
    }
}

/// Appends `n` in decimal.
pub fn push_decimal(s: &mut String, n: u64) {
    s.push_str(Decimal::new(n).as_str());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_match_format() {
        for n in [0u64, 7, 10, 99, 100, 65_535, 1 << 32, u64::MAX] {
            assert_eq!(Decimal::new(n).as_str(), n.to_string());
            let mut s = String::from("x");
            push_decimal(&mut s, n);
            assert_eq!(s, format!("x{n}"));
        }
    }
}
