//! A table of options deserialized into a typed struct with errors that name the option: an
//! unknown key lists the keys the struct accepts, a bad value names its path.

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};

/// A problem with one option: its path below the table (`initial_interval`, `key.metadata`;
/// empty for the table itself) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionError {
    /// The option's path inside the table, empty for the table as a whole.
    pub key: String,
    /// What is wrong, naming the value and what was expected.
    pub message: String,
}

impl OptionError {
    /// An error about `key` (empty: the whole table).
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        OptionError {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The same error one level further down: `prefix.key`.
    pub fn under(mut self, prefix: &str) -> Self {
        self.key = join_key(prefix, &self.key);
        self
    }
}

impl std::fmt::Display for OptionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// `a.b`, or whichever of the two is not empty.
pub fn join_key(prefix: &str, key: &str) -> String {
    match (prefix.is_empty(), key.is_empty()) {
        (true, _) => key.to_string(),
        (_, true) => prefix.to_string(),
        _ if key.starts_with('[') => format!("{prefix}{key}"),
        _ => format!("{prefix}.{key}"),
    }
}

/// The field names of struct `T` as serde sees them (empty when `T` is not a struct).
pub fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Introspect(&mut fields));
    fields
}

/// Deserializes `value` (a table) into `T`: a key `T` does not have is reported as
/// `unknown option "k" (expected a, b, c)`, any other problem with the path of the value.
pub fn parse<T: DeserializeOwned>(value: &toml::Value) -> Result<T, OptionError> {
    let fields = field_names::<T>();
    if let (toml::Value::Table(t), false) = (value, fields.is_empty()) {
        for key in t.keys() {
            if !fields.contains(&key.as_str()) {
                return Err(OptionError::new(
                    "",
                    format!("unknown option {key:?} (expected {})", fields.join(", ")),
                ));
            }
        }
    }
    serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." { String::new() } else { path };
        OptionError::new(key, e.into_inner().to_string().trim_end().to_string())
    })
}

/// A deserializer that records the field list a struct asks for, then stops.
struct Introspect<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for Introspect<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("introspected"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Opts {
        #[serde(default)]
        count: u32,
        #[serde(default, with = "crate::config::duration")]
        every: Duration,
    }

    fn value(text: &str) -> toml::Value {
        let t: toml::Table = toml::from_str(&format!("v = {text}")).unwrap();
        t["v"].clone()
    }

    #[test]
    fn unknown_options_list_the_known_ones() {
        assert_eq!(field_names::<Opts>(), ["count", "every"]);
        let e = parse::<Opts>(&value("{ cuont = 1 }")).unwrap_err();
        assert_eq!(e.key, "");
        assert_eq!(
            e.message,
            "unknown option \"cuont\" (expected count, every)"
        );
    }

    #[test]
    fn bad_values_name_their_path() {
        let e = parse::<Opts>(&value("{ every = \"soon\" }")).unwrap_err();
        assert_eq!(e.key, "every");
        assert!(e.message.contains("\"soon\""), "{e}");
        let e = parse::<Opts>(&value("{ count = \"x\" }")).unwrap_err();
        assert_eq!(e.to_string().split(':').next(), Some("count"));
        let ok = parse::<Opts>(&value("{ count = 2, every = \"1s\" }")).unwrap();
        assert_eq!((ok.count, ok.every), (2, Duration::from_secs(1)));
        assert_eq!(join_key("a", "[1]"), "a[1]");
        assert_eq!(join_key("a", "b"), "a.b");
        assert_eq!(OptionError::new("b", "m").under("a").to_string(), "a.b: m");
    }
}
