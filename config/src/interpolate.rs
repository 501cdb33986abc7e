//! `${VAR}` and `${VAR:-default}` interpolation of the raw config text.
//!
//! Interpolation runs on the text before TOML parsing so that line numbers in parse errors
//! still match the file. Substituted values are escaped as TOML basic-string content, so an
//! environment variable can never inject TOML syntax; `$${` writes a literal `${`.

/// Replaces every `${VAR}` / `${VAR:-default}` in `text` using `lookup`.
///
/// An unset variable without a default is an error naming the variable and its line.
pub fn interpolate(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut line = 1;
    while let Some(pos) = rest.find('$') {
        let (before, after) = rest.split_at(pos);
        line += before.matches('\n').count();
        out.push_str(before);
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
            continue;
        }
        let Some(body) = after.strip_prefix("${") else {
            out.push('$');
            rest = &after[1..];
            continue;
        };
        let end = body
            .find('}')
            .ok_or_else(|| format!("line {line}: unterminated ${{ in config"))?;
        let expr = &body[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "line {line}: invalid variable name {name:?} in ${{...}}"
            ));
        }
        let value = match lookup(name).filter(|v| !v.is_empty()) {
            Some(v) => v,
            None => match default {
                Some(d) => d.to_string(),
                None => {
                    return Err(format!(
                        "line {line}: environment variable {name} is not set (write ${{{name}:-default}} to give a default)"
                    ))
                }
            },
        };
        out.push_str(&escape_toml_basic(&value));
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
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
    fn unset_variable_without_default_names_the_line() {
        let err = interpolate("a = 1\nb = \"${MISSING}\"", env).unwrap_err();
        assert!(err.contains("line 2") && err.contains("MISSING"), "{err}");
    }
}
