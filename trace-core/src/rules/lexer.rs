//! Splits one line into words exactly as iptables-restore does (xshared.c
//! `add_param_to_argv`): blanks (space, tab) separate words; a double quote opens a quoted
//! part, inside which a backslash escapes the next character (iptables-save writes `"` and
//! `\` in comments as `\"` and `\\`); the closing quote ends the word (`"a"b` is two words);
//! single quotes and backslashes outside quotes are ordinary characters. Columns are 1-based
//! character positions.

use super::error::{ParseError, ParseErrorKind};

/// One word of a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    pub text: String,
    /// 1-based character column of the word's first character (or opening quote).
    pub col: u32,
    /// True when any part was quoted: a quoted `!` is a value, not a negation.
    pub quoted: bool,
}

impl Word {
    /// True for an unquoted word equal to `s` (options and `!` must be unquoted).
    pub fn is(&self, s: &str) -> bool {
        !self.quoted && self.text == s
    }
}

/// Splits `line` (line number `line_no`, for errors) into words.
pub fn split(line: &str, line_no: u32) -> Result<Vec<Word>, ParseError> {
    let mut words = Vec::new();
    let mut cur: Option<Word> = None;
    let mut quote_col: Option<u32> = None;
    let mut escaped = false;
    for (i, c) in line.chars().enumerate() {
        let col = i as u32 + 1;
        if quote_col.is_some() {
            let w = cur.get_or_insert_with(|| Word {
                text: String::new(),
                col,
                quoted: true,
            });
            if escaped {
                escaped = false;
                w.text.push(c);
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                quote_col = None;
                words.extend(cur.take());
            } else {
                w.text.push(c);
            }
        } else if c == ' ' || c == '\t' {
            words.extend(cur.take());
        } else {
            let w = cur.get_or_insert_with(|| Word {
                text: String::new(),
                col,
                quoted: false,
            });
            if c == '"' {
                quote_col = Some(col);
                w.quoted = true;
            } else {
                w.text.push(c);
            }
        }
    }
    if let Some(col) = quote_col {
        return Err(ParseError::new(
            line_no,
            col,
            ParseErrorKind::UnterminatedQuote,
        ));
    }
    words.extend(cur);
    Ok(words)
}

/// Quotes `s` for iptables-save output when needed (`"a b"`, `"say \"hi\""`), and also a
/// value that reads like a generic option (`"-j"`): quoted words are never taken as options.
/// A backslash alone needs no quotes (it is literal outside quotes).
pub fn quote(s: &str) -> String {
    const OPTION_LIKE: [&str; 11] = [
        "-s", "-d", "-p", "-i", "-o", "-f", "-m", "-j", "-g", "-c", "!",
    ];
    let plain = !s.is_empty()
        && !OPTION_LIKE.contains(&s)
        && s.chars().all(|c| !matches!(c, ' ' | '\t' | '"'));
    if plain {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(line: &str) -> Vec<String> {
        split(line, 1)
            .unwrap()
            .into_iter()
            .map(|w| w.text)
            .collect()
    }

    #[test]
    fn splits_on_blanks_and_keeps_columns() {
        let w = split("-A  INPUT\t-j ACCEPT ", 1).unwrap();
        assert_eq!(
            w.iter().map(|w| w.text.as_str()).collect::<Vec<_>>(),
            ["-A", "INPUT", "-j", "ACCEPT"]
        );
        assert_eq!(w.iter().map(|w| w.col).collect::<Vec<_>>(), [1, 5, 11, 14]);
    }

    #[test]
    fn quotes_group_and_escape() {
        assert_eq!(
            texts(r#"--log-prefix "[UFW BLOCK] " -j"#),
            ["--log-prefix", "[UFW BLOCK] ", "-j"]
        );
        assert_eq!(
            texts(r#"--comment "say \"hi\" \\o/""#),
            ["--comment", r#"say "hi" \o/"#]
        );
        // As iptables-restore: the closing quote ends the word; single quotes are literal.
        assert_eq!(texts(r#"a"b c"d 'e f'"#), ["ab c", "d", "'e", "f'"]);
        assert_eq!(texts(r"a\b"), [r"a\b"]);
        assert_eq!(texts(r#"--comment """#), ["--comment", ""]);
        let w = split(r#"! "!""#, 1).unwrap();
        assert!(w[0].is("!") && !w[1].is("!"));
    }

    #[test]
    fn unterminated_quote_names_its_column() {
        let e = split(r#"-m comment --comment "oops"#, 7).unwrap_err();
        assert_eq!((e.line, e.column), (7, 22));
    }

    #[test]
    fn quote_round_trips() {
        for s in [
            "plain",
            "a b",
            r#"x"y"#,
            r"back\slash",
            r#"both\""#,
            "",
            "[UFW BLOCK] ",
            "-j",
            "!",
            "it's",
        ] {
            assert_eq!(texts(&quote(s)), [s]);
        }
    }
}
