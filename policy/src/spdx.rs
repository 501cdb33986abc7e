//! SPDX license expressions (`MIT OR (Apache-2.0 AND BSD-3-Clause)`,
//! `GPL-2.0-only WITH Classpath-exception-2.0`, `LicenseRef-Proprietary`) and the question
//! a license rule asks of them: can the package be used under licenses the rule accepts?
//!
//! `OR` is a choice for the user, `AND` is a conjunction, `WITH` binds an exception to one
//! license; precedence is `WITH` > `AND` > `OR`, operators are case-insensitive. License ids
//! compare case-insensitively and by their base id: `GPL-2.0`, `GPL-2.0+`, `GPL-2.0-only` and
//! `GPL-2.0-or-later` are one license for a list, so denying `GPL-3.0` also denies
//! `GPL-3.0-or-later`. A list entry `X WITH E` names exactly that combination and overrides
//! a plain `X` entry in the other list.

/// A parsed expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// One license, perhaps with an exception.
    License(License),
    /// All of these.
    And(Vec<Expr>),
    /// Any one of these.
    Or(Vec<Expr>),
}

/// A license id with its `WITH` exception, both lower-cased and reduced to the base id.
#[derive(Clone, Debug, PartialEq)]
pub struct License {
    base: Box<str>,
    exception: Option<Box<str>>,
}

/// Nesting allowed in an expression from upstream metadata before it is called unparseable.
const MAX_DEPTH: usize = 32;

impl License {
    /// Parses a list entry: `MIT`, `GPL-2.0-only WITH Classpath-exception-2.0`.
    pub fn parse_entry(s: &str) -> Result<License, String> {
        match Expr::parse(s)? {
            Expr::License(l) => Ok(l),
            _ => Err(format!(
                "{s:?} is an expression; list one license (optionally `WITH` an exception)"
            )),
        }
    }

    fn new(id: &str, exception: Option<&str>) -> License {
        let id = id.to_ascii_lowercase();
        let mut base = id.trim_end_matches('+');
        for suffix in ["-or-later", "-only"] {
            if let Some(b) = base.strip_suffix(suffix) {
                base = b;
            }
        }
        License {
            base: base.into(),
            exception: exception.map(|e| e.to_ascii_lowercase().into()),
        }
    }

    /// Which of `entries` names this license: `Exact` for an `X WITH E` entry naming this
    /// combination, `Base` for a plain `X` entry.
    fn matched_by(&self, entries: &[License]) -> Option<Match> {
        let mut best = None;
        for e in entries {
            if e.base != self.base {
                continue;
            }
            match &e.exception {
                None => best = best.or(Some(Match::Base)),
                Some(x) if Some(x) == self.exception.as_ref() => return Some(Match::Exact),
                Some(_) => {}
            }
        }
        best
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Match {
    Base,
    Exact,
}

/// What a license rule accepts.
#[derive(Clone, Debug, Default)]
pub struct Lists {
    /// If non-empty, only these.
    pub allow: Vec<License>,
    /// Never these.
    pub deny: Vec<License>,
}

impl Lists {
    fn accepts(&self, l: &License) -> bool {
        let denied = l.matched_by(&self.deny);
        let allowed = l.matched_by(&self.allow);
        match (denied, allowed) {
            (Some(Match::Exact), _) => false,
            (_, Some(Match::Exact)) => true,
            (Some(Match::Base), _) => false,
            (None, a) => self.allow.is_empty() || a.is_some(),
        }
    }

    /// Whether some way of satisfying `expr` uses only accepted licenses.
    pub fn satisfiable(&self, expr: &Expr) -> bool {
        match expr {
            Expr::License(l) => self.accepts(l),
            Expr::And(xs) => xs.iter().all(|x| self.satisfiable(x)),
            Expr::Or(xs) => xs.iter().any(|x| self.satisfiable(x)),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Tok<'a> {
    Open,
    Close,
    Word(&'a str),
}

fn tokenize(s: &str) -> Vec<Tok<'_>> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in s.char_indices() {
        let boundary = c.is_whitespace() || c == '(' || c == ')';
        if boundary {
            if let Some(st) = start.take() {
                out.push(Tok::Word(&s[st..i]));
            }
            if c == '(' {
                out.push(Tok::Open);
            } else if c == ')' {
                out.push(Tok::Close);
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(st) = start {
        out.push(Tok::Word(&s[st..]));
    }
    out
}

struct Parser<'a> {
    toks: Vec<Tok<'a>>,
    i: usize,
}

impl<'a> Parser<'a> {
    fn peek_word(&self, w: &str) -> bool {
        matches!(self.toks.get(self.i), Some(Tok::Word(x)) if x.eq_ignore_ascii_case(w))
    }

    fn or(&mut self, depth: usize) -> Result<Expr, String> {
        let mut xs = vec![self.and(depth)?];
        while self.peek_word("OR") {
            self.i += 1;
            xs.push(self.and(depth)?);
        }
        Ok(if xs.len() == 1 {
            xs.remove(0)
        } else {
            Expr::Or(xs)
        })
    }

    fn and(&mut self, depth: usize) -> Result<Expr, String> {
        let mut xs = vec![self.atom(depth)?];
        while self.peek_word("AND") {
            self.i += 1;
            xs.push(self.atom(depth)?);
        }
        Ok(if xs.len() == 1 {
            xs.remove(0)
        } else {
            Expr::And(xs)
        })
    }

    fn atom(&mut self, depth: usize) -> Result<Expr, String> {
        match self.toks.get(self.i).copied() {
            Some(Tok::Open) => {
                if depth >= MAX_DEPTH {
                    return Err("nested too deeply".into());
                }
                self.i += 1;
                let e = self.or(depth + 1)?;
                if self.toks.get(self.i) != Some(&Tok::Close) {
                    return Err("missing `)`".into());
                }
                self.i += 1;
                Ok(e)
            }
            Some(Tok::Word(w)) => {
                if is_operator(w) {
                    return Err(format!("expected a license id, found {w:?}"));
                }
                let id = license_id(w)?;
                self.i += 1;
                let exception = if self.peek_word("WITH") {
                    self.i += 1;
                    match self.toks.get(self.i).copied() {
                        Some(Tok::Word(x)) if !is_operator(x) && valid_id(x) => {
                            self.i += 1;
                            Some(x)
                        }
                        _ => return Err("`WITH` needs an exception id".into()),
                    }
                } else {
                    None
                };
                Ok(Expr::License(License::new(id, exception)))
            }
            Some(Tok::Close) => Err("unexpected `)`".into()),
            None => Err("unexpected end".into()),
        }
    }
}

fn is_operator(w: &str) -> bool {
    ["AND", "OR", "WITH"]
        .iter()
        .any(|o| w.eq_ignore_ascii_case(o))
}

fn valid_id(w: &str) -> bool {
    !w.is_empty()
        && w.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b':')
}

fn license_id(w: &str) -> Result<&str, String> {
    let base = w.strip_suffix('+').unwrap_or(w);
    if valid_id(base) {
        Ok(w)
    } else {
        Err(format!("{w:?} is not a license id"))
    }
}

impl Expr {
    /// Parses an SPDX license expression.
    pub fn parse(s: &str) -> Result<Expr, String> {
        if s.len() > 4096 {
            return Err("license expression too long".into());
        }
        let mut p = Parser {
            toks: tokenize(s),
            i: 0,
        };
        let e = p
            .or(0)
            .map_err(|e| format!("invalid SPDX expression {s:?}: {e}"))?;
        if p.i != p.toks.len() {
            return Err(format!("invalid SPDX expression {s:?}: trailing input"));
        }
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lists(allow: &[&str], deny: &[&str]) -> Lists {
        Lists {
            allow: allow
                .iter()
                .map(|s| License::parse_entry(s).unwrap())
                .collect(),
            deny: deny
                .iter()
                .map(|s| License::parse_entry(s).unwrap())
                .collect(),
        }
    }
    fn ok(l: &Lists, expr: &str) -> bool {
        l.satisfiable(&Expr::parse(expr).unwrap())
    }

    #[test]
    fn precedence_is_with_then_and_then_or() {
        let e = Expr::parse("MIT OR Apache-2.0 AND GPL-2.0 WITH Classpath-exception-2.0").unwrap();
        let Expr::Or(xs) = e else { panic!("{e:?}") };
        assert_eq!(xs.len(), 2);
        assert!(matches!(&xs[1], Expr::And(a) if a.len() == 2));
    }

    #[test]
    fn operators_are_case_insensitive() {
        assert_eq!(
            Expr::parse("mit or apache-2.0").unwrap(),
            Expr::parse("MIT OR Apache-2.0").unwrap()
        );
        assert!(Expr::parse("GPL-2.0 with Classpath-exception-2.0").is_ok());
    }

    #[test]
    fn malformed_expressions_are_rejected() {
        for bad in [
            "",
            "MIT OR",
            "(MIT",
            "MIT)",
            "AND MIT",
            "MIT WITH",
            "MIT MIT",
            "SEE LICENSE IN LICENSE.txt",
            "MIT/X11",
            "GPL-2.0 WITH OR",
        ] {
            assert!(Expr::parse(bad).is_err(), "{bad:?}");
        }
        let deep = "(".repeat(100) + "MIT" + &")".repeat(100);
        assert!(Expr::parse(&deep).is_err());
        assert!(License::parse_entry("MIT OR ISC").is_err());
    }

    #[test]
    fn deny_blocks_only_when_every_choice_needs_a_denied_license() {
        let l = lists(&[], &["GPL-3.0"]);
        assert!(ok(&l, "MIT OR GPL-3.0"));
        assert!(!ok(&l, "GPL-3.0"));
        assert!(!ok(&l, "MIT AND GPL-3.0"));
        assert!(!ok(&l, "gpl-3.0-or-later"));
        assert!(!ok(&l, "GPL-3.0+"));
        assert!(!ok(&l, "GPL-3.0-only"));
        assert!(ok(&l, "GPL-2.0"));
        assert!(ok(&l, "(MIT AND GPL-3.0) OR ISC"));
        assert!(!ok(
            &l,
            "(MIT OR GPL-3.0) AND (GPL-3.0 OR (BSD-3-Clause AND GPL-3.0))"
        ));
        assert!(ok(
            &l,
            "(MIT OR GPL-3.0) AND (GPL-3.0 OR (BSD-3-Clause AND (ISC OR GPL-3.0)))"
        ));
    }

    #[test]
    fn allow_needs_a_choice_using_only_allowed_licenses() {
        let l = lists(&["MIT", "Apache-2.0", "BSD-3-Clause"], &[]);
        assert!(ok(&l, "MIT"));
        assert!(ok(&l, "mit"));
        assert!(ok(&l, "MIT OR GPL-3.0"));
        assert!(!ok(&l, "MIT AND GPL-3.0"));
        assert!(ok(&l, "(MIT AND Apache-2.0) OR GPL-3.0"));
        assert!(!ok(&l, "LicenseRef-Proprietary"));
        assert!(ok(&l, "Apache-2.0 AND (BSD-3-Clause OR ISC)"));
    }

    #[test]
    fn with_exceptions_match_exact_entries_over_plain_ones() {
        let l = lists(
            &["GPL-2.0 WITH Classpath-exception-2.0", "MIT"],
            &["GPL-2.0"],
        );
        assert!(ok(&l, "GPL-2.0-only WITH Classpath-exception-2.0"));
        assert!(!ok(&l, "GPL-2.0-only"));
        assert!(!ok(&l, "GPL-2.0 WITH GCC-exception-2.0"));
        // A plain allow entry admits the license with any exception.
        let l = lists(&["Apache-2.0"], &[]);
        assert!(ok(&l, "Apache-2.0 WITH LLVM-exception"));
        // An exact deny entry beats a plain allow entry.
        let l = lists(&["GPL-2.0"], &["GPL-2.0 WITH Font-exception-2.0"]);
        assert!(ok(&l, "GPL-2.0"));
        assert!(!ok(&l, "GPL-2.0 WITH Font-exception-2.0"));
    }

    #[test]
    fn license_refs_and_document_refs_are_ids() {
        let l = lists(&["LicenseRef-Acme"], &[]);
        assert!(ok(&l, "LicenseRef-acme"));
        assert!(Expr::parse("DocumentRef-spdx:LicenseRef-x").is_ok());
    }

    #[test]
    fn allow_and_deny_together_need_both() {
        let l = lists(&["MIT", "GPL-3.0"], &["GPL-3.0"]);
        assert!(!ok(&l, "GPL-3.0"));
        assert!(ok(&l, "GPL-3.0 OR MIT"));
    }
}
