//! `${VAR}` and `${VAR:-default}` interpolation of the raw config text.
//!
//! Interpolation runs on the text before TOML parsing. It follows TOML's lexical structure
//! just enough to leave comments alone (a `#` outside any string starts a comment to the end
//! of the line, so a commented-out `# password = "${TOKEN}"` needs no variable), and it
//! records where it substituted so that errors found in the expanded text are reported at
//! the line and column of the file as written ([`Expanded::source_offset`]). Substituted
//! values are escaped for the string they land in, so an environment variable can never
//! inject TOML syntax; `$${` writes a literal `${`.

use std::fmt;

/// Config text after interpolation, with the map back to the text as written.
#[derive(Debug)]
pub struct Expanded {
    /// The text to parse.
    pub text: String,
    /// One entry per substitution, in order.
    subs: Vec<Sub>,
}

/// A substitution: `src` bytes of the original became `out` bytes of the expansion.
#[derive(Debug)]
struct Sub {
    src: std::ops::Range<usize>,
    out: std::ops::Range<usize>,
}

impl Expanded {
    /// The byte offset in the original text that expanded offset `pos` comes from; a
    /// position inside a substituted value maps to its `${`.
    pub fn source_offset(&self, pos: usize) -> usize {
        let mut shift: isize = 0;
        for s in &self.subs {
            if pos < s.out.start {
                break;
            }
            if pos < s.out.end {
                return s.src.start;
            }
            shift = s.src.end as isize - s.out.end as isize;
        }
        (pos as isize + shift).max(0) as usize
    }
}

/// Why interpolation failed, at byte `offset` of the original text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterpolateError {
    /// Byte offset of the offending `${` in the original text.
    pub offset: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for InterpolateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Where the lexer is: which kind of TOML string (or comment) the current byte is in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Bare,
    Comment,
    Basic,
    Literal,
    MultiBasic,
    MultiLiteral,
}

/// Replaces every `${VAR}` / `${VAR:-default}` in `text` using `lookup`; errors name the
/// line and column.
///
/// An unset or empty variable without a default is an error; `${VAR:-default}` uses the
/// default for both, as the shell does. Comments are copied unchanged.
pub fn interpolate(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    expand(text, lookup).map(|e| e.text).map_err(|e| {
        let (line, col) = crate::load::line_col(text, e.offset);
        format!("line {line}, column {col}: {}", e.message)
    })
}

/// [`interpolate`], keeping the map from expanded positions back to `text`.
pub fn expand(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Expanded, InterpolateError> {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut subs = Vec::new();
    let mut copied = 0; // text[..copied] is in `out` already
    let mut ctx = Ctx::Bare;
    let mut i = 0;
    let run = |i: usize, q: u8| b[i..].iter().take_while(|&&c| c == q).count();
    while i < b.len() {
        let c = b[i];
        match ctx {
            Ctx::Comment => {
                if c == b'\n' {
                    ctx = Ctx::Bare;
                }
                i += 1;
                continue;
            }
            Ctx::Bare if c == b'#' => {
                ctx = Ctx::Comment;
                i += 1;
                continue;
            }
            Ctx::Bare if c == b'"' || c == b'\'' => {
                let n = run(i, c).min(3);
                ctx = match (c, n) {
                    (b'"', 3) => Ctx::MultiBasic,
                    (b'"', 2) | (b'\'', 2) => Ctx::Bare, // empty string
                    (b'"', _) => Ctx::Basic,
                    (_, 3) => Ctx::MultiLiteral,
                    _ => Ctx::Literal,
                };
                i += n;
                continue;
            }
            Ctx::Basic | Ctx::MultiBasic if c == b'\\' => {
                i += 2;
                continue;
            }
            Ctx::Basic if c == b'"' || c == b'\n' => ctx = Ctx::Bare,
            Ctx::Literal if c == b'\'' || c == b'\n' => ctx = Ctx::Bare,
            Ctx::MultiBasic | Ctx::MultiLiteral
                if (c == b'"' && ctx == Ctx::MultiBasic)
                    || (c == b'\'' && ctx == Ctx::MultiLiteral) =>
            {
                // A closing delimiter may be preceded by up to two quotes of the content.
                let n = run(i, c);
                if n >= 3 {
                    ctx = Ctx::Bare;
                }
                i += n;
                continue;
            }
            _ if c == b'$' => {
                if b[i..].starts_with(b"$${") {
                    out.push_str(&text[copied..i]);
                    out.push_str("${");
                    subs.push(Sub {
                        src: i..i + 3,
                        out: out.len() - 2..out.len(),
                    });
                    i += 3;
                    copied = i;
                    continue;
                }
                if b[i..].starts_with(b"${") {
                    let (value, end) = substitute(text, i, ctx, &lookup)?;
                    out.push_str(&text[copied..i]);
                    let start = out.len();
                    out.push_str(&value);
                    subs.push(Sub {
                        src: i..end,
                        out: start..out.len(),
                    });
                    i = end;
                    copied = i;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    out.push_str(&text[copied.min(text.len())..]);
    Ok(Expanded { text: out, subs })
}

/// The escaped value of the `${...}` at `at` (in string context `ctx`) and the offset just
/// past its `}`.
fn substitute(
    text: &str,
    at: usize,
    ctx: Ctx,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<(String, usize), InterpolateError> {
    let err = |message: String| InterpolateError {
        offset: at,
        message,
    };
    let body = &text[at + 2..];
    let end = body
        .find('}')
        .ok_or_else(|| err("unterminated ${ (write $${ for a literal ${)".into()))?;
    let expr = &body[..end];
    let (name, default) = match expr.split_once(":-") {
        Some((n, d)) => (n, Some(d)),
        None => (expr, None),
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(err(format!("invalid variable name {name:?} in ${{...}}")));
    }
    let value = match (lookup(name), default) {
        (Some(v), _) if !v.is_empty() => v,
        (_, Some(d)) => d.to_string(),
        (Some(_), None) => {
            return Err(err(format!(
            "environment variable {name} is empty (write ${{{name}:-default}} to give a default)"
        )))
        }
        (None, None) => {
            return Err(err(format!(
            "environment variable {name} is not set (write ${{{name}:-default}} to give a default)"
        )))
        }
    };
    let escaped = match ctx {
        // Literal strings have no escapes: the value goes in as is, if it can.
        Ctx::Literal if value.contains(['\'', '\n', '\r']) => {
            return Err(err(format!(
                "the value of {name} cannot be written inside a '...' string (it holds a quote or a line break); use \"...\""
            )))
        }
        Ctx::MultiLiteral if value.contains("'''") => {
            return Err(err(format!(
                "the value of {name} cannot be written inside a '''...''' string (it holds '''); use \"...\""
            )))
        }
        Ctx::Literal | Ctx::MultiLiteral => value,
        _ => escape_toml_basic(&value),
    };
    Ok((escaped, at + 2 + end + 1))
}

fn escape_toml_basic(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cr\"et".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_variables_and_defaults() {
        assert_eq!(
            interpolate("a = \"${TOKEN}\"", env).unwrap(),
            "a = \"s3cr\\\"et\""
        );
        assert_eq!(interpolate("u = \"${NOPE:-x}\"", env).unwrap(), "u = \"x\"");
        assert_eq!(
            interpolate("u = \"${EMPTY:-d}\"", env).unwrap(),
            "u = \"d\""
        );
        assert_eq!(interpolate("u = \"${NOPE:-}\"", env).unwrap(), "u = \"\"");
        assert_eq!(
            interpolate("p = \"$${X} $5\"", env).unwrap(),
            "p = \"${X} $5\""
        );
    }

    #[test]
    fn unset_variable_without_default_names_the_line_and_column() {
        let err = interpolate("a = 1\nb = \"${MISSING}\"", env).unwrap_err();
        assert!(
            err.starts_with("line 2, column 6:") && err.contains("MISSING is not set"),
            "{err}"
        );
        let err = interpolate("b = \"${EMPTY}\"", env).unwrap_err();
        assert!(err.contains("EMPTY is empty"), "{err}");
    }

    #[test]
    fn comments_are_not_interpolated_but_strings_with_hashes_are() {
        let text = r##"# username = "${DOCKERHUB_USER}"
a = "#${TOKEN}" # ${NOPE}
b = '#${TOKEN}' # '${NOPE}
c = """
# ${TOKEN} "" ""${TOKEN}"""  # ${NOPE}
d = '''
#${TOKEN}''' # ${NOPE}
e = "\"#${TOKEN}" # ${NOPE}
f = "" # ${NOPE}
g = '' # ${NOPE}
"##;
        let out = interpolate(text, env).unwrap();
        let want = r##"# username = "${DOCKERHUB_USER}"
a = "#s3cr\"et" # ${NOPE}
b = '#s3cr"et' # '${NOPE}
c = """
# s3cr\"et "" ""s3cr\"et"""  # ${NOPE}
d = '''
#s3cr"et''' # ${NOPE}
e = "\"#s3cr\"et" # ${NOPE}
f = "" # ${NOPE}
g = '' # ${NOPE}
"##;
        assert_eq!(out, want);
        // The expansion parses as the TOML it was meant to be.
        let v: toml::Value = toml::from_str(&out).unwrap();
        assert_eq!(v["a"].as_str(), Some("#s3cr\"et"));
        assert_eq!(v["b"].as_str(), Some("#s3cr\"et"));
        assert_eq!(v["d"].as_str(), Some("#s3cr\"et"));
        assert_eq!(v["e"].as_str(), Some("\"#s3cr\"et"));
    }

    #[test]
    fn a_value_that_cannot_be_a_literal_string_is_refused() {
        let err = interpolate("a = 1\nb = '${TOKEN}'", |_| Some("it's".into())).unwrap_err();
        assert!(
            err.starts_with("line 2, column 6:") && err.contains("'...'"),
            "{err}"
        );
    }

    #[test]
    fn expanded_offsets_map_back_to_the_text_as_written() {
        let text = "a = \"${TOKEN}\" x\nb = \"$${Y}\" z";
        let e = expand(text, env).unwrap();
        // After a substituted value, and after an escaped `$${`.
        let x = e.text.find('x').unwrap();
        assert_eq!(e.source_offset(x), text.find('x').unwrap());
        let z = e.text.find('z').unwrap();
        assert_eq!(e.source_offset(z), text.find('z').unwrap());
        // Inside the value: the `${` it came from; before it: unchanged.
        assert_eq!(e.source_offset(6), 5);
        assert_eq!(e.source_offset(2), 2);
    }
}
