//! Serde deserialization from the spanned tree, with errors located at the user's text.
//!
//! Typed manifest structs derive `Deserialize` with `deny_unknown_fields`; this deserializer
//! attaches the origin and key path of the innermost value involved to any error serde
//! raises (unknown key, wrong type, missing key).

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};

use super::error::ManifestError;
use super::value::{Entry, Kind, SValue};

/// Deserialize a typed value from a spanned tree node; `path` is its dotted key path.
pub fn from_svalue<T: de::DeserializeOwned>(v: &SValue, path: &str) -> Result<T, ManifestError> {
    T::deserialize(ValueDe {
        v,
        path: path.to_string(),
    })
}

struct ValueDe<'a> {
    v: &'a SValue,
    path: String,
}

impl<'a> ValueDe<'a> {
    fn locate(&self, e: ManifestError) -> ManifestError {
        e.at(self.v.origin.clone()).path(self.path.clone())
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl<'de, 'a> de::Deserializer<'de> for ValueDe<'a> {
    type Error = ManifestError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        let r = match &self.v.kind {
            Kind::Str(s) => visitor.visit_str(s),
            Kind::Int(i) => visitor.visit_i64(*i),
            Kind::Float(f) => visitor.visit_f64(*f),
            Kind::Bool(b) => visitor.visit_bool(*b),
            Kind::Array(a) => {
                let mut seq = SeqDe {
                    items: a.iter().enumerate(),
                    path: &self.path,
                };
                visitor.visit_seq(&mut seq).and_then(|v| {
                    // A fixed-length list (`size = [w, h]`, a `[epoch, lr]` pair) takes
                    // only the elements it needs: any left over is an error, not ignored.
                    let left = seq.items.count();
                    if left > 0 {
                        return Err(ManifestError::new(format!(
                            "wrong length: expected {} element(s), found {}",
                            a.len() - left,
                            a.len()
                        )));
                    }
                    Ok(v)
                })
            }
            Kind::Table(t) => visitor.visit_map(MapDe {
                entries: t.iter(),
                pending: None,
                path: &self.path,
            }),
        };
        r.map_err(|e| self.locate(e))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match &self.v.kind {
            Kind::Str(s) => {
                let d: de::value::StrDeserializer<'_, ManifestError> =
                    s.as_str().into_deserializer();
                visitor.visit_enum(d).map_err(|e| self.locate(e))
            }
            other => Err(self.locate(ManifestError::new(format!(
                "wrong type: expected a string, found {}",
                other.type_name()
            )))),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

struct SeqDe<'a, I> {
    items: I,
    path: &'a str,
}

impl<'de, 'a, I> SeqAccess<'de> for SeqDe<'a, I>
where
    I: Iterator<Item = (usize, &'a SValue)>,
{
    type Error = ManifestError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        match self.items.next() {
            Some((i, v)) => seed
                .deserialize(ValueDe {
                    v,
                    path: format!("{}[{i}]", self.path),
                })
                .map(Some),
            None => Ok(None),
        }
    }
}

struct MapDe<'a, I> {
    entries: I,
    pending: Option<(&'a String, &'a Entry)>,
    path: &'a str,
}

impl<'de, 'a, I> MapAccess<'de> for MapDe<'a, I>
where
    I: Iterator<Item = (&'a String, &'a Entry)>,
{
    type Error = ManifestError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        match self.entries.next() {
            Some((k, e)) => {
                self.pending = Some((k, e));
                let d: de::value::StrDeserializer<'_, ManifestError> =
                    k.as_str().into_deserializer();
                seed.deserialize(d)
                    .map(Some)
                    .map_err(|err| err.at(e.key_origin.clone()).path(join(self.path, k)))
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let (k, e) = self
            .pending
            .take()
            .ok_or_else(|| ManifestError::new("value requested before key"))?;
        seed.deserialize(ValueDe {
            v: &e.value,
            path: join(self.path, k),
        })
    }
}
