//! Identities as types: a stage's [`StageKey`] (what the store caches under), an
//! artifact's [`ContentHash`] (what its folder is named by) and a stage's [`Recipe`] (what
//! a job is named by before its inputs exist). Each is 64 hex characters of BLAKE3 on
//! disk and in JSON (`serde(transparent)`), and shows its first 12 in lines and tables. A
//! leaf: it depends on nothing of pipe's.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(#[serde(deserialize_with = "hex_string")] String);

        impl $name {
            /// From its hex form (as read from a file name or a record).
            pub fn new(hex: impl Into<String>) -> Self {
                $name(hex.into())
            }

            /// From a string that must be 64 lowercase hex characters (a name found on
            /// disk, which anyone may have put there).
            pub fn parse(s: &str) -> Option<Self> {
                is_hash(s).then(|| $name(s.to_string()))
            }

            /// The whole hex form.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The first 12 characters, for lines and tables.
            pub fn short(&self) -> &str {
                short(&self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl From<blake3::Hash> for $name {
            fn from(h: blake3::Hash) -> Self {
                $name(h.to_hex().to_string())
            }
        }
    };
}

hex_id!(
    /// A stage's key: the BLAKE3 of its kind, version, effective configuration, its
    /// inputs' content hashes and its dataset's fingerprint. What the store caches under.
    StageKey
);

hex_id!(
    /// The BLAKE3 of an artifact's content (`content::hash_dir`): its folder's name.
    ContentHash
);

hex_id!(
    /// A stage's recipe: the same material as its key with its inputs' recipes in place
    /// of their content, so known before any input is built. What a job is named by.
    Recipe
);

/// A record's hash field: 64 lowercase hex characters, else the record is refused. A
/// record edited by hand or damaged could otherwise name a folder outside the store
/// (`"../x"`, an absolute path) by way of `artifacts/<hash>`.
fn hex_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if is_hash(&s) {
        Ok(s)
    } else {
        Err(serde::de::Error::custom(format!(
            "{:?} is not a hash (64 lowercase hex characters)",
            s.chars().take(80).collect::<String>()
        )))
    }
}

/// Whether `s` is 64 lowercase hex characters.
pub fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The first 12 characters of an id (or the whole of a shorter string).
pub fn short(s: &str) -> &str {
    match s.char_indices().nth(12) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_their_hex_in_json_and_twelve_characters_short() {
        let hex = "ab".repeat(32);
        let k = StageKey::parse(&hex).unwrap();
        assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{hex}\""));
        assert_eq!(k.short(), &hex[..12]);
        assert_eq!(
            serde_json::from_str::<ContentHash>(&format!("\"{hex}\""))
                .unwrap()
                .as_str(),
            hex
        );
        assert!(ContentHash::parse("abc").is_none());
        assert!(Recipe::parse(&"AB".repeat(32)).is_none());
    }
}
