//! TOML configuration text (the carrier catalog, the network registry): what a syntax error may say about it.
//! The parser's own rendering quotes the offending line of the text; ours names the place and the problem
//! only, so an operator's configuration is never repeated into logs or the readiness answer.

/// `e`, raised parsing `text`, as "line L, column C: problem" (1-based; the place is left out when the
/// parser gave none).
pub fn syntax_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim();
    let Some(span) = e.span() else {
        return message.to_owned();
    };
    let before = text.get(..span.start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {column}: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        let e = toml::from_str::<toml::Table>(text).unwrap_err();
        syntax_error(text, &e)
    }

    /// Before, the message was the parser's rendering, which quotes the offending line.
    #[test]
    fn a_syntax_error_names_its_place_and_never_quotes_the_text() {
        let text = "a = 1\nb = \"private part\" trailing\n";
        let said = error(text);
        assert!(said.starts_with("line 2, column "), "{said}");
        assert!(!said.contains("private part"), "{said}");
        assert!(!said.contains('\n'), "{said}");
        let said = error("[x]\n[x]\n");
        assert_eq!(said, "line 2, column 2: duplicate key");
    }
}
