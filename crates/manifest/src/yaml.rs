//! YAML parsing into a generic tree, and mapping a path in that tree back to a
//! line and column of the source.
//!
//! `serde_yaml` keeps no spans on its `Value`, but it stamps the position of the
//! current event onto any error a visitor returns. [`locate`] exploits that:
//! it walks the document again with a seed that fails on purpose when it
//! reaches the wanted node, and reads the position off the error. A re-parse
//! per diagnostic is cheap for manifest-sized files, and the positions come
//! from the real parser, so flow style, anchors and multi-line scalars are
//! handled exactly as the loader saw them.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_yaml::Value;

/// One step of a path into a YAML tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// A path into a YAML tree, printed as `egress.routes[1].host`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct YamlPath(pub(crate) Vec<Seg>);

impl YamlPath {
    pub(crate) fn key(&self, k: &str) -> YamlPath {
        let mut p = self.0.clone();
        p.push(Seg::Key(k.to_owned()));
        YamlPath(p)
    }

    pub(crate) fn index(&self, i: usize) -> YamlPath {
        let mut p = self.0.clone();
        p.push(Seg::Index(i));
        YamlPath(p)
    }
}

impl fmt::Display for YamlPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

/// A YAML syntax or structure error: message and where.
#[derive(Debug)]
pub(crate) struct ParseError {
    pub(crate) message: String,
    pub(crate) pos: Pos,
}

/// Parses one YAML document into a generic tree.
pub(crate) fn parse(text: &str) -> Result<Value, ParseError> {
    serde_yaml::from_str::<Value>(text).map_err(|e| {
        let pos =
            e.location().map(|l| Pos { line: l.line(), column: l.column() }).unwrap_or(Pos { line: 1, column: 1 });
        ParseError { message: clean_message(&e.to_string()), pos }
    })
}

/// Strips the " at line L column C" suffix serde_yaml appends; we print the
/// position ourselves.
fn clean_message(msg: &str) -> String {
    let msg = match msg.find(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    };
    msg.trim().to_owned()
}

/// Which part of a mapping entry a diagnostic points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// The key of the last path segment (e.g. an unknown key).
    Key,
    /// The value at the path.
    Value,
}

const MARKER: &str = "\u{0}bot-bottle-locate";

/// Finds the position of the node at `path` in `text`; `None` if the path
/// does not exist (the caller then falls back to the parent).
pub(crate) fn locate(text: &str, path: &YamlPath, target: Target) -> Option<Pos> {
    let de = serde_yaml::Deserializer::from_str(text);
    let seed = Locate { path: &path.0, target };
    match seed.deserialize(de) {
        Ok(()) => None,
        Err(e) if e.to_string().contains(MARKER) => e.location().map(|l| Pos { line: l.line(), column: l.column() }),
        Err(_) => None,
    }
}

/// Locates `path`, falling back to the nearest ancestor that exists.
pub(crate) fn locate_or_parent(text: &str, path: &YamlPath, target: Target) -> Pos {
    let mut p = path.clone();
    let mut t = target;
    loop {
        if let Some(pos) = locate(text, &p, t) {
            return pos;
        }
        if p.0.pop().is_none() {
            return Pos { line: 1, column: 1 };
        }
        t = Target::Value;
    }
}

struct Locate<'p> {
    path: &'p [Seg],
    target: Target,
}

fn found<E: de::Error>() -> E {
    E::custom(MARKER)
}

impl<'de> DeserializeSeed<'de> for Locate<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

macro_rules! scalar_visits {
    ($($name:ident: $ty:ty),*) => {
        $(fn $name<E: de::Error>(self, _: $ty) -> Result<(), E> {
            if self.path.is_empty() { Err(found()) } else { Ok(()) }
        })*
    };
}

impl<'de> Visitor<'de> for Locate<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    scalar_visits!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        if self.path.is_empty() { Err(found()) } else { Ok(()) }
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.visit_unit()
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        // Tagged values (`!tag x`): point at the tag itself.
        if self.path.is_empty() { Err(found()) } else { Ok(()) }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((first, rest)) = self.path.split_first() else {
            return Err(found());
        };
        let Seg::Key(want) = first else { return Ok(()) };
        let stop_at_key = rest.is_empty() && self.target == Target::Key;
        while let Some(key) = map.next_key_seed(KeySeed { want, stop_at_key })? {
            if key {
                return map.next_value_seed(Locate { path: rest, target: self.target });
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((first, rest)) = self.path.split_first() else {
            return Err(found());
        };
        let Seg::Index(want) = first else { return Ok(()) };
        for _ in 0..*want {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        seq.next_element_seed(Locate { path: rest, target: self.target })?;
        Ok(())
    }
}

/// Deserializes a mapping key and reports whether it is the wanted one; when
/// the key itself is the target, fails on it so its position is recorded.
struct KeySeed<'w> {
    want: &'w str,
    stop_at_key: bool,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        let hit = v == self.want;
        if hit && self.stop_at_key { Err(found()) } else { Ok(hit) }
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        self.visit_str(if v { "true" } else { "false" })
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<bool, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        self.visit_str("~")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(false)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str, path: &[&str], target: Target) -> Option<(usize, usize)> {
        let mut p = YamlPath::default();
        for s in path {
            p = match s.parse::<usize>() {
                Ok(n) => p.index(n),
                Err(_) => p.key(s),
            };
        }
        locate(text, &p, target).map(|p| (p.line, p.column))
    }

    #[test]
    fn locates_keys_values_and_list_items() {
        let text = "a: 1\negress:\n  routes:\n    - host: x.com\n    - { host: y.com, paths: [\"/v1\"] }\n";
        assert_eq!(at(text, &["a"], Target::Key), Some((1, 1)));
        assert_eq!(at(text, &["a"], Target::Value), Some((1, 4)));
        assert_eq!(at(text, &["egress", "routes", "0", "host"], Target::Value), Some((4, 13)));
        assert_eq!(at(text, &["egress", "routes", "1", "host"], Target::Key), Some((5, 9)));
        assert_eq!(at(text, &["egress", "routes", "1", "paths", "0"], Target::Value), Some((5, 30)));
        assert_eq!(at(text, &["egress", "routes", "2"], Target::Value), None);
        assert_eq!(at(text, &["nope"], Target::Key), None);
    }

    #[test]
    fn parse_errors_carry_positions() {
        let e = parse("a: [1, 2\nb: 3\n").expect_err("unclosed list");
        assert!(e.pos.line >= 1);
        assert!(!e.message.contains("at line"));
    }
}
