//! A TOML value tree that remembers where every key and value came from.
//!
//! Manifests are merged (`extends`, `--set`) before they are typed, so the origin of each
//! value must survive the merge: errors found later point at the file, line and column the
//! user actually wrote. This module is only the tree and its merge; typing lives in `de`,
//! origins in `source`.

use std::ops::Range;
use std::sync::Arc;

use indexmap::IndexMap;
use toml::de::{DeTable, DeValue};

use super::error::ManifestError;
use super::source::{Origin, Source};

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

/// The span of the line whose key, or table header, has the most dots (outside strings,
/// roughly: enough to point at a key nested too deep).
fn deepest_line(text: &str) -> std::ops::Range<usize> {
    let mut best = (0, 0..0);
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let key = line.split('=').next().unwrap_or("");
        let dots = key.matches('.').count() + key.matches('{').count();
        if dots > best.0 {
            best = (dots, at..at + line.trim_end().len());
        }
        at += line.len();
    }
    best.1
}

fn toml_error(source: &Arc<Source>, e: &toml::de::Error) -> ManifestError {
    // The parser stops nesting at its recursion limit without saying where: the line
    // whose key (or table header) nests deepest is where it gave up.
    let span = e
        .span()
        .unwrap_or_else(|| match e.message().contains("recursion limit") {
            true => deepest_line(&source.text),
            false => 0..0,
        });
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

/// A dotted key path one level down: `prefix.key`, or `key` at the top.
pub fn join_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}
