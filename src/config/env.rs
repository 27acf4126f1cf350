//! Environment overrides (`LETTA_PROXY__SECTION__KEY=value`) and the
//! deserializer that types them by the field they land on.
//!
//! An override is typed by its target, not by how its value looks:
//! `LETTA_PROXY__ADMIN__TOKEN=123456` is a string because `admin.token` is one;
//! `LETTA_PROXY__SERVER__MAX_CONNECTIONS=5000` is a number because that key is
//! one. Overrides enter the config tree as strings, and [`Lenient`] converts a
//! string when the field being read asks for a number, a boolean or a list.
//! Overrides land on the defaults merged with the file, so
//! `LETTA_PROXY__BACKENDS__0__URL` changes the default backend when the file
//! lists none.

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{self, Deserializer, IntoDeserializer, Unexpected, Visitor};
use toml::Value;

type Error = toml::de::Error;

/// Overlays `overlay` onto `base`: tables merge key by key, anything else
/// (values and whole lists) is replaced.
pub fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Table(b), Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// Sets `SECTION__KEY` (case-insensitive; `BACKENDS__0__URL` indexes lists; one
/// past the end appends) to the string `raw`.
pub fn apply_override(root: &mut Value, key: &str, raw: &str) -> Result<(), String> {
    let parts: Vec<String> = key.split("__").map(|p| p.to_ascii_lowercase()).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err("expected LETTA_PROXY__SECTION__KEY".into());
    }
    set_path(root, &parts, Value::String(raw.to_string()))
}

fn set_path(node: &mut Value, parts: &[String], value: Value) -> Result<(), String> {
    let Some((head, rest)) = parts.split_first() else {
        *node = value;
        return Ok(());
    };
    match node {
        Value::Table(t) => {
            // A key that does not exist yet: a list when the next part is an index.
            let next_is_index = rest.first().is_some_and(|p| p.parse::<usize>().is_ok());
            let child = t.entry(head.clone()).or_insert_with(|| {
                if next_is_index {
                    Value::Array(Vec::new())
                } else {
                    Value::Table(toml::Table::new())
                }
            });
            set_path(child, rest, value)
        }
        Value::Array(items) => {
            let idx: usize = head
                .parse()
                .map_err(|_| format!("{head:?} is not an index into a list"))?;
            if idx == items.len() {
                items.push(Value::Table(toml::Table::new()));
            }
            let len = items.len();
            let child = items
                .get_mut(idx)
                .ok_or_else(|| format!("index {idx} is past the end of a list of {len}"))?;
            set_path(child, rest, value)
        }
        _ => Err(format!("{head:?} is below a plain value")),
    }
}

/// A config tree read by the types it is deserialized into: a string becomes a
/// number, boolean or list when the field asks for one.
pub struct Lenient(pub Value);

impl<'de> IntoDeserializer<'de, Error> for Lenient {
    type Deserializer = Lenient;
    fn into_deserializer(self) -> Lenient {
        self
    }
}

macro_rules! parse_as {
    ($($method:ident => $ty:ty, $visit:ident;)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            match self.0 {
                Value::String(s) => match s.trim().parse::<$ty>() {
                    Ok(n) => visitor.$visit(n),
                    Err(_) => Err(de::Error::invalid_value(
                        Unexpected::Str(&s),
                        &concat!("a ", stringify!($ty)),
                    )),
                },
                other => Lenient(other).deserialize_any(visitor),
            }
        }
    )*};
}

impl<'de> Deserializer<'de> for Lenient {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Array(items) => {
                let mut seq = SeqDeserializer::new(items.into_iter().map(Lenient));
                let v = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(v)
            }
            Value::Table(t) => {
                let mut map = MapDeserializer::new(t.into_iter().map(|(k, v)| (k, Lenient(v))));
                let v = visitor.visit_map(&mut map)?;
                map.end()?;
                Ok(v)
            }
            other => other.deserialize_any(visitor),
        }
    }

    parse_as! {
        deserialize_u8 => u8, visit_u8;
        deserialize_u16 => u16, visit_u16;
        deserialize_u32 => u32, visit_u32;
        deserialize_u64 => u64, visit_u64;
        deserialize_i8 => i8, visit_i8;
        deserialize_i16 => i16, visit_i16;
        deserialize_i32 => i32, visit_i32;
        deserialize_i64 => i64, visit_i64;
        deserialize_f32 => f32, visit_f32;
        deserialize_f64 => f64, visit_f64;
        deserialize_bool => bool, visit_bool;
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::String(s) => Lenient(string_list(&s)).deserialize_any(visitor),
            other => Lenient(other).deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        // TOML has no null: a present key is always `Some`.
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }

    serde::forward_to_deserialize_any! {
        char str string bytes byte_buf unit unit_struct tuple
        tuple_struct map struct identifier ignored_any i128 u128
    }
}

/// A list given as a string: TOML (`["a", "b"]`) or comma-separated (`a, b`).
fn string_list(s: &str) -> Value {
    let parsed = toml::from_str::<toml::Table>(&format!("v = {s}"))
        .ok()
        .and_then(|mut t| t.remove("v"));
    match parsed {
        Some(list @ Value::Array(_)) => list,
        _ => Value::Array(
            s.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| Value::String(p.to_string()))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Target {
        token: Option<String>,
        count: u32,
        ratio: f64,
        on: bool,
        names: Vec<String>,
        ports: Vec<u16>,
    }

    #[test]
    fn strings_take_the_type_of_their_field() {
        let mut root = Value::Table(toml::Table::new());
        for (k, v) in [
            ("TOKEN", "123456"),
            ("COUNT", "42"),
            ("RATIO", "0.5"),
            ("ON", "true"),
            ("NAMES", "a, b"),
            ("PORTS", "[1, 2]"),
        ] {
            apply_override(&mut root, k, v).unwrap();
        }
        let t = Target::deserialize(Lenient(root)).unwrap();
        assert_eq!(
            t,
            Target {
                token: Some("123456".into()),
                count: 42,
                ratio: 0.5,
                on: true,
                names: vec!["a".into(), "b".into()],
                ports: vec![1, 2],
            }
        );
    }

    #[test]
    fn a_bad_value_names_what_was_expected() {
        let mut root = Value::Table(toml::Table::new());
        for (k, v) in [
            ("TOKEN", "x"),
            ("COUNT", "many"),
            ("RATIO", "1"),
            ("ON", "yes"),
            ("NAMES", "a"),
            ("PORTS", "1"),
        ] {
            apply_override(&mut root, k, v).unwrap();
        }
        let e = Target::deserialize(Lenient(root)).unwrap_err().to_string();
        assert!(e.contains("many") && e.contains("u32"), "{e}");
    }

    #[test]
    fn an_index_below_a_missing_key_makes_a_list() {
        let mut root = Value::Table(toml::Table::new());
        apply_override(&mut root, "BACKENDS__0__URL", "http://x:1").unwrap();
        assert!(root["backends"].is_array());
        assert_eq!(root["backends"][0]["url"].as_str(), Some("http://x:1"));
        let e = apply_override(&mut root, "BACKENDS__5__URL", "http://x:1").unwrap_err();
        assert!(e.contains("past the end"), "{e}");
    }

    #[test]
    fn merge_replaces_lists_and_merges_tables() {
        let mut base: Value = toml::from_str("a = [1, 2]\n[t]\nx = 1\ny = 2\n").unwrap();
        let over: Value = toml::from_str("a = [3]\n[t]\ny = 5\n").unwrap();
        merge(&mut base, over);
        assert_eq!(base["a"].as_array().unwrap().len(), 1);
        assert_eq!(base["t"]["x"].as_integer(), Some(1));
        assert_eq!(base["t"]["y"].as_integer(), Some(5));
    }
}
