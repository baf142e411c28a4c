//! Tokens of the filter language. Words carry everything that is not an operator or a
//! parenthesis (keywords, numbers, addresses, `10.0.0.0/8`, `1000-2000`, `eth+`), so that the
//! parser decides what a word means from its position, as tcpdump does.

use super::FilterError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    Word(String),
    LParen,
    RParen,
    Not,
    And,
    Or,
}

/// A token and the 1-based column (in characters) where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub tok: Tok,
    pub column: usize,
}

impl Token {
    /// How the token reads in an error message.
    pub fn describe(&self) -> String {
        match &self.tok {
            Tok::Word(w) => format!("'{w}'"),
            Tok::LParen => "'('".into(),
            Tok::RParen => "')'".into(),
            Tok::Not => "'not'".into(),
            Tok::And => "'and'".into(),
            Tok::Or => "'or'".into(),
        }
    }
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '/' | '-' | '_' | '+')
}

/// Split `src` into tokens. `and`/`or`/`not` words become operators.
pub fn lex(src: &str) -> Result<Vec<Token>, FilterError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        let (tok, len) = match c {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '(' => (Tok::LParen, 1),
            ')' => (Tok::RParen, 1),
            '!' => (Tok::Not, 1),
            '&' if chars.get(i + 1) == Some(&'&') => (Tok::And, 2),
            '|' if chars.get(i + 1) == Some(&'|') => (Tok::Or, 2),
            c if is_word_char(c) => {
                let len = chars[i..].iter().take_while(|c| is_word_char(**c)).count();
                let word: String = chars[i..i + len].iter().collect();
                (word_token(word), len)
            }
            other => return Err(FilterError::BadChar { column, ch: other }),
        };
        out.push(Token { tok, column });
        i += len;
    }
    Ok(out)
}

fn word_token(word: String) -> Tok {
    match word.as_str() {
        "and" => Tok::And,
        "or" => Tok::Or,
        "not" => Tok::Not,
        _ => Tok::Word(word),
    }
}
