//! A TOML value tree that remembers where every key and value came from.
//!
//! Manifests are merged (`extends`, `--set`) before they are typed, so the origin of each
//! value must survive the merge: errors found later point at the file, line and column the
//! user actually wrote. This module is only the tree and its merge; typing lives in `de`.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indexmap::IndexMap;
use toml::de::{DeTable, DeValue};

use super::error::ManifestError;

/// One source text: a manifest file or a `--set` argument.
#[derive(Debug)]
pub struct Source {
    /// Display name (a path, or `--set`).
    pub name: String,
    /// Path on disk, if any.
    pub path: Option<PathBuf>,
    /// The full text.
    pub text: String,
}

/// Where a key or value was written.
#[derive(Clone)]
pub struct Origin {
    /// The text it came from.
    pub source: Arc<Source>,
    /// Byte range in that text.
    pub span: Range<usize>,
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (l, c) = self.line_col();
        write!(f, "{}:{}:{}", self.source.name, l, c)
    }
}

impl Origin {
    /// 1-based line and column of the start of the span.
    pub fn line_col(&self) -> (usize, usize) {
        let text = &self.source.text;
        let start = self.span.start.min(text.len());
        let before = &text[..start];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let col = text[line_start..start].chars().count() + 1;
        (line, col)
    }

    /// `file:line:col`.
    pub fn location(&self) -> String {
        let (l, c) = self.line_col();
        format!("{}:{}:{}", self.source.name, l, c)
    }

    /// The source line holding the span start, and the span's column range within it.
    pub fn snippet(&self) -> (String, usize, usize) {
        let text = &self.source.text;
        let start = self.span.start.min(text.len());
        let line_start = text[..start].rfind('\n').map(|i| i + 1).unwrap_or(0);
        let line_end = text[start..]
            .find('\n')
            .map(|i| start + i)
            .unwrap_or(text.len());
        let line = text[line_start..line_end].to_string();
        let col = text[line_start..start].chars().count();
        let end = self.span.end.clamp(start, line_end);
        let width = text[start..end].chars().count().max(1);
        (line, col, width)
    }
}

/// A value with its origin.
#[derive(Clone, Debug)]
pub struct SValue {
    /// The value itself.
    pub kind: Kind,
    /// Where it was written.
    pub origin: Origin,
}

/// A table entry: the key's own origin and the value.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Where the key was written.
    pub key_origin: Origin,
    /// The value.
    pub value: SValue,
}

/// The shape of a value.
#[derive(Clone, Debug)]
pub enum Kind {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// An array.
    Array(Vec<SValue>),
    /// A table, in the order written.
    Table(IndexMap<String, Entry>),
}

impl Kind {
    /// The TOML name of this value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Kind::Str(_) => "string",
            Kind::Int(_) => "integer",
            Kind::Float(_) => "float",
            Kind::Bool(_) => "boolean",
            Kind::Array(_) => "array",
            Kind::Table(_) => "table",
        }
    }
}

impl SValue {
    /// The table's entries, if this is a table.
    pub fn as_table(&self) -> Option<&IndexMap<String, Entry>> {
        match &self.kind {
            Kind::Table(t) => Some(t),
            _ => None,
        }
    }

    /// Mutable table entries, if this is a table.
    pub fn as_table_mut(&mut self) -> Option<&mut IndexMap<String, Entry>> {
        match &mut self.kind {
            Kind::Table(t) => Some(t),
            _ => None,
        }
    }

    /// The string, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Look up a key in a table.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.as_table().and_then(|t| t.get(key))
    }

    /// Merge `over` on top of `self`: tables merge key by key, anything else is replaced.
    pub fn merge(&mut self, over: SValue) {
        match (&mut self.kind, over.kind) {
            (Kind::Table(base), Kind::Table(top)) => {
                for (k, e) in top {
                    match base.get_mut(&k) {
                        Some(existing) => {
                            existing.key_origin = e.key_origin;
                            existing.value.merge(e.value);
                        }
                        None => {
                            base.insert(k, e);
                        }
                    }
                }
            }
            (_, kind) => {
                self.kind = kind;
                self.origin = over.origin;
            }
        }
    }

    /// Convert to plain JSON (origins dropped).
    pub fn to_json(&self) -> serde_json::Value {
        match &self.kind {
            Kind::Str(s) => serde_json::Value::String(s.clone()),
            Kind::Int(i) => serde_json::Value::from(*i),
            Kind::Float(f) => serde_json::Value::from(*f),
            Kind::Bool(b) => serde_json::Value::Bool(*b),
            Kind::Array(a) => serde_json::Value::Array(a.iter().map(|v| v.to_json()).collect()),
            Kind::Table(t) => serde_json::Value::Object(
                t.iter()
                    .map(|(k, e)| (k.clone(), e.value.to_json()))
                    .collect(),
            ),
        }
    }
}

/// Parse a TOML document into a spanned tree.
pub fn parse_document(source: Arc<Source>) -> Result<SValue, ManifestError> {
    let text: &str = &source.text;
    let doc = DeTable::parse(text).map_err(|e| toml_error(&source, &e))?;
    let span = doc.span();
    let table = convert_table(&source, doc.get_ref())?;
    Ok(SValue {
        kind: Kind::Table(table),
        origin: Origin {
            source: source.clone(),
            span,
        },
    })
}

/// Parse a single TOML value (the right-hand side of `--set k=v`).
pub fn parse_value(source: Arc<Source>, offset: usize) -> Option<SValue> {
    let text = &source.text[offset..];
    let v = DeValue::parse(text).ok()?;
    let span = v.span();
    let mut out = convert_value(&source, v.get_ref(), span.clone()).ok()?;
    shift(&mut out, offset);
    Some(out)
}

fn shift(v: &mut SValue, by: usize) {
    v.origin.span = v.origin.span.start + by..v.origin.span.end + by;
    match &mut v.kind {
        Kind::Array(a) => a.iter_mut().for_each(|x| shift(x, by)),
        Kind::Table(t) => t.values_mut().for_each(|e| {
            e.key_origin.span = e.key_origin.span.start + by..e.key_origin.span.end + by;
            shift(&mut e.value, by)
        }),
        _ => {}
    }
}

fn toml_error(source: &Arc<Source>, e: &toml::de::Error) -> ManifestError {
    let span = e.span().unwrap_or(0..0);
    ManifestError::new(format!("invalid TOML: {}", e.message().trim())).at(Origin {
        source: source.clone(),
        span,
    })
}

fn convert_table(
    source: &Arc<Source>,
    t: &DeTable<'_>,
) -> Result<IndexMap<String, Entry>, ManifestError> {
    let mut out = IndexMap::new();
    for (k, v) in t.iter() {
        let key_origin = Origin {
            source: source.clone(),
            span: k.span(),
        };
        let value = convert_value(source, v.get_ref(), v.span())?;
        out.insert(k.get_ref().to_string(), Entry { key_origin, value });
    }
    Ok(out)
}

fn convert_value(
    source: &Arc<Source>,
    v: &DeValue<'_>,
    span: Range<usize>,
) -> Result<SValue, ManifestError> {
    let origin = Origin {
        source: source.clone(),
        span,
    };
    let kind = match v {
        DeValue::String(s) => Kind::Str(s.to_string()),
        DeValue::Integer(i) => {
            let digits: String = i.as_str().chars().filter(|c| *c != '_').collect();
            let (neg, body) = match digits.strip_prefix('-') {
                Some(rest) => (true, rest.to_string()),
                None => (false, digits.trim_start_matches('+').to_string()),
            };
            let body = match i.radix() {
                16 | 8 | 2 => body[2..].to_string(),
                _ => body,
            };
            let n = i64::from_str_radix(&body, i.radix()).map_err(|_| {
                ManifestError::new(format!("integer `{}` out of range", i.as_str()))
                    .at(origin.clone())
            })?;
            Kind::Int(if neg { -n } else { n })
        }
        DeValue::Float(f) => {
            let s: String = f.as_str().chars().filter(|c| *c != '_').collect();
            let x = match s.as_str() {
                "inf" | "+inf" => f64::INFINITY,
                "-inf" => f64::NEG_INFINITY,
                "nan" | "+nan" | "-nan" => f64::NAN,
                other => other.parse::<f64>().map_err(|_| {
                    ManifestError::new(format!("invalid float `{}`", f.as_str())).at(origin.clone())
                })?,
            };
            Kind::Float(x)
        }
        DeValue::Boolean(b) => Kind::Bool(*b),
        DeValue::Datetime(d) => Kind::Str(d.to_string()),
        DeValue::Array(a) => Kind::Array(
            a.iter()
                .map(|x| convert_value(source, x.get_ref(), x.span()))
                .collect::<Result<_, _>>()?,
        ),
        DeValue::Table(t) => Kind::Table(convert_table(source, t)?),
    };
    Ok(SValue { kind, origin })
}

/// Read a manifest file into a [`Source`].
pub fn read_source(path: &Path, display: String) -> Result<Arc<Source>, ManifestError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ManifestError::new(format!("cannot read {}: {e}", path.display())))?;
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            // Locate the first bad byte: line and column (in characters) of the valid prefix.
            let at = e.utf8_error().valid_up_to();
            let valid = std::str::from_utf8(&e.as_bytes()[..at]).unwrap_or_default();
            let line = valid.matches('\n').count() + 1;
            let col = valid.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            return Err(ManifestError::new(format!(
                "{display}:{line}:{col}: the file is not valid UTF-8 (byte 0x{:02x}); TOML files are UTF-8",
                e.as_bytes()[at]
            )));
        }
    };
    Ok(Arc::new(Source {
        name: display,
        path: Some(path.to_path_buf()),
        text,
    }))
}
