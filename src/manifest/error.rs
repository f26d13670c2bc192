//! Manifest errors that point at the user's text.
//!
//! Rendered like rustc: `error: ...`, then `--> file:line:col`, the offending line with a
//! caret under the span, and an optional `help:` line (e.g. a did-you-mean).

use std::fmt;

use super::source::{Origin, ReadError};

/// An error in a manifest, located in its source when possible.
#[derive(Clone)]
pub struct ManifestError {
    /// What is wrong, in one line.
    pub message: String,
    /// Where: the key or value at fault.
    pub origin: Option<Origin>,
    /// The dotted key path (`stages.split.seed`), when known.
    pub key_path: Option<String>,
    /// A hint, e.g. `did you mean `lr_drop`?`.
    pub help: Option<String>,
}

impl ManifestError {
    /// An error with a message and nothing else yet.
    pub fn new(message: impl Into<String>) -> Self {
        ManifestError {
            message: message.into(),
            origin: None,
            key_path: None,
            help: None,
        }
    }

    /// Attach an origin (kept if one is already set: the innermost wins).
    pub fn at(mut self, origin: Origin) -> Self {
        if self.origin.is_none() {
            self.origin = Some(origin);
        }
        self
    }

    /// Attach a key path (kept if one is already set).
    pub fn path(mut self, path: impl Into<String>) -> Self {
        if self.key_path.is_none() {
            let p = path.into();
            if !p.is_empty() {
                self.key_path = Some(p);
            }
        }
        self
    }

    /// Attach a hint.
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// `file:line:col` if known.
    pub fn location(&self) -> Option<String> {
        self.origin.as_ref().map(|o| o.location())
    }
}

/// The closest candidate to `word`, if any is close enough to be a plausible typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c.to_string())
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Some(o) => write!(f, "{}: {}", o.location(), self.message)?,
            None => write!(f, "{}", self.message)?,
        }
        if let Some(p) = &self.key_path {
            write!(f, " (key `{p}`)")?;
        }
        if let Some(o) = &self.origin {
            let (line, col, width) = o.snippet();
            let (lno, _) = o.line_col();
            let gutter = lno.to_string().len();
            write!(
                f,
                "\n{:gutter$} |\n{lno} | {line}\n{:gutter$} | {}{}",
                "",
                "",
                " ".repeat(col),
                "^".repeat(width),
            )?;
        }
        if let Some(h) = &self.help {
            write!(f, "\n  = help: {h}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for ManifestError {}

impl From<ReadError> for ManifestError {
    fn from(e: ReadError) -> Self {
        ManifestError::new(e.0)
    }
}

impl serde::de::Error for ManifestError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ManifestError::new(msg.to_string())
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        let mut e = ManifestError::new(format!("unknown key `{field}`"));
        e.help = Some(match did_you_mean(field, expected.iter().copied()) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!("expected one of: {}", expected.join(", ")),
        });
        e
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        let mut e = ManifestError::new(format!("unknown value `{variant}`"));
        e.help = Some(match did_you_mean(variant, expected.iter().copied()) {
            Some(s) => format!("did you mean `{s}`? (one of: {})", expected.join(", ")),
            None => format!("expected one of: {}", expected.join(", ")),
        });
        e
    }

    fn missing_field(field: &'static str) -> Self {
        ManifestError::new(format!("missing required key `{field}`"))
    }

    fn invalid_type(unexp: serde::de::Unexpected<'_>, exp: &dyn serde::de::Expected) -> Self {
        ManifestError::new(format!("wrong type: expected {exp}, found {unexp}"))
    }
}
