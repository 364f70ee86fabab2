//! A payload read into only the members the decoder looks at, borrowing their text from the entry.
//!
//! The decoder needs a dozen members of each object (`key`, `records`, `id`, `lastplus`, ...);
//! reading the whole payload into a `serde_json::Value` first would allocate every key, every string
//! and a map per object, only to copy the few strings that matter once more. Here the parser hands
//! each member straight to the decoder's types: strings stay borrowed from the entry's bytes (a
//! [`Cow`] owns one only when it holds an escape), unknown members are skipped without being kept.
//!
//! The rule that keeps this exact: every value, kept or skipped, is read with `deserialize_any` and
//! every visitor accepts every JSON type, so a payload parses here if and only if it parses as a
//! `Value` — same numbers out of range, same bad escapes, same nesting limit, same error text and
//! position — and a member given twice keeps its last value, as a `Value` map does. Values the
//! decoder only shows as text when they are not strings (a number as an `id`, an object as a
//! `diag`) are kept as a `Value` ([`Leaf::Other`]), so their text is the same as before.

use std::borrow::Cow;
use std::fmt;

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{Deserialize, DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// The members of an object the decoder reads, besides `records`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name {
    Key,
    UserEmail,
    Diag,
    Id,
    Action,
    Lastplus,
    TrackId,
    TrackTitle,
    TrackUrl,
    QueryRowCount,
    PageName,
    TrackType,
}

const NAMES: usize = 12;

impl Name {
    fn of(text: &str) -> Option<Name> {
        Some(match text {
            "key" => Name::Key,
            "user_email" => Name::UserEmail,
            "diag" => Name::Diag,
            "id" => Name::Id,
            "action" => Name::Action,
            "lastplus" => Name::Lastplus,
            "track_id" => Name::TrackId,
            "track_title" => Name::TrackTitle,
            "track_url" => Name::TrackUrl,
            "query_row_count" => Name::QueryRowCount,
            "page_name" => Name::PageName,
            "track_type" => Name::TrackType,
            _ => return None,
        })
    }
}

/// The type of a JSON value, as reasons name it.
pub fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A member's value where the decoder reads it as text.
#[derive(Debug, Clone, PartialEq)]
pub enum Leaf<'a> {
    Null,
    Text(Cow<'a, str>),
    /// A boolean, a number, a list or an object (rare: boxed, so the usual leaf stays small).
    Other(Box<Value>),
}

impl<'a> Leaf<'a> {
    /// As text: strings as they are (borrowed), other values in compact JSON; null is absent.
    pub fn as_text(&self) -> Option<Cow<'_, str>> {
        match self {
            Leaf::Null => None,
            Leaf::Text(s) => Some(Cow::Borrowed(s)),
            Leaf::Other(v) => Some(Cow::Owned(v.to_string())),
        }
    }

    /// [`Leaf::as_text`], owned.
    pub fn text(&self) -> Option<String> {
        self.as_text().map(Cow::into_owned)
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Leaf::Null => "null",
            Leaf::Text(_) => "a string",
            Leaf::Other(v) => type_name(v),
        }
    }

    fn from_value(value: &'a Value) -> Leaf<'a> {
        match value {
            Value::Null => Leaf::Null,
            Value::String(s) => Leaf::Text(Cow::Borrowed(s)),
            other => Leaf::Other(Box::new(other.clone())),
        }
    }
}

/// An object: the members the decoder reads, by [`Name`], and `records`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Obj<'a> {
    leaves: [Option<Leaf<'a>>; NAMES],
    pub records: Option<Records<'a>>,
}

impl<'a> Obj<'a> {
    /// The member, when the object has it (`Some(Leaf::Null)` for an explicit null).
    pub fn get(&self, name: Name) -> Option<&Leaf<'a>> {
        self.leaves.get(name as usize).and_then(Option::as_ref)
    }

    /// Whether the object has the member, whatever its value.
    pub fn has(&self, name: Name) -> bool {
        self.get(name).is_some()
    }

    fn set(&mut self, name: Name, leaf: Leaf<'a>) {
        if let Some(slot) = self.leaves.get_mut(name as usize) {
            *slot = Some(leaf);
        }
    }

    fn from_map(map: &'a Map<String, Value>) -> Obj<'a> {
        let mut obj = Obj::default();
        for (k, v) in map {
            if k == "records" {
                obj.records = Some(Records::from_value(v));
            } else if let Some(name) = Name::of(k) {
                obj.set(name, Leaf::from_value(v));
            }
        }
        obj
    }
}

/// The value of a `records` member.
#[derive(Debug, Clone, PartialEq)]
pub enum Records<'a> {
    List(Vec<Item<'a>>),
    /// Not a list: its type.
    NotList(&'static str),
}

impl<'a> Records<'a> {
    fn from_value(value: &'a Value) -> Records<'a> {
        match value {
            Value::Array(items) => Records::List(items.iter().map(Item::from_value).collect()),
            other => Records::NotList(type_name(other)),
        }
    }
}

/// An element of a list of records.
// A record is held in place: the list is one allocation, boxing would add one per record.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Item<'a> {
    Object(Obj<'a>),
    /// Not an object: its type.
    NotObject(&'static str),
}

impl<'a> Item<'a> {
    /// The object's `id` member, when it is an object that has one.
    pub fn id(&self) -> Option<&Leaf<'a>> {
        match self {
            Item::Object(o) => o.get(Name::Id),
            Item::NotObject(_) => None,
        }
    }

    fn from_value(value: &'a Value) -> Item<'a> {
        match value {
            Value::Object(map) => Item::Object(Obj::from_map(map)),
            other => Item::NotObject(type_name(other)),
        }
    }
}

/// A whole payload.
// Held on the stack for one entry; boxing the object would allocate for every entry.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Top<'a> {
    Object(Obj<'a>),
    List(Vec<Item<'a>>),
    /// Neither an object nor a list: its type.
    Scalar(&'static str),
}

impl<'a> Top<'a> {
    /// The same payload, read from an already-parsed document.
    pub fn from_value(value: &'a Value) -> Top<'a> {
        match value {
            Value::Object(map) => Top::Object(Obj::from_map(map)),
            Value::Array(items) => Top::List(items.iter().map(Item::from_value).collect()),
            other => Top::Scalar(type_name(other)),
        }
    }

    /// `None` for an object or a list, else the type found.
    pub fn scalar(&self) -> Option<&'static str> {
        match self {
            Top::Scalar(found) => Some(found),
            _ => None,
        }
    }
}

/// A value read and dropped; it only says its type. It checks exactly what a `Value` would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skipped(pub &'static str);

/// The visitors below share one shape: each JSON type maps to a result, lists and objects are read
/// to their end. `T` says what a string, a list and an object become; the scalars give their type.
trait Shape<'de>: Sized {
    fn string(text: Cow<'de, str>) -> Self;
    fn scalar(found: &'static str, value: Value) -> Self;
    fn list<A: SeqAccess<'de>>(seq: A) -> Result<Self, A::Error>;
    fn object<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error>;
}

struct ShapeVisitor<T>(std::marker::PhantomData<T>);

fn visit<'de, T: Shape<'de>, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
    d.deserialize_any(ShapeVisitor(std::marker::PhantomData))
}

impl<'de, T: Shape<'de>> Visitor<'de> for ShapeVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: Error>(self, v: bool) -> Result<T, E> {
        Ok(T::scalar("a boolean", Value::Bool(v)))
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<T, E> {
        Ok(T::scalar("a number", Value::Number(v.into())))
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<T, E> {
        Ok(T::scalar("a number", Value::Number(v.into())))
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<T, E> {
        // As `Value` reads it (JSON has no NaN or infinity, so this is always a number).
        let value = Number::from_f64(v).map_or(Value::Null, Value::Number);
        Ok(T::scalar(type_name(&value), value))
    }

    fn visit_borrowed_str<E: Error>(self, v: &'de str) -> Result<T, E> {
        Ok(T::string(Cow::Borrowed(v)))
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<T, E> {
        Ok(T::string(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: Error>(self, v: String) -> Result<T, E> {
        Ok(T::string(Cow::Owned(v)))
    }

    fn visit_unit<E: Error>(self) -> Result<T, E> {
        Ok(T::scalar("null", Value::Null))
    }

    fn visit_none<E: Error>(self) -> Result<T, E> {
        self.visit_unit()
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<T, A::Error> {
        T::list(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::object(map)
    }
}

fn skip_list<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<Skipped>()?.is_some() {}
    Ok(())
}

fn skip_object<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_key::<Skipped>()?.is_some() {
        map.next_value::<Skipped>()?;
    }
    Ok(())
}

impl<'de> Shape<'de> for Skipped {
    fn string(_: Cow<'de, str>) -> Skipped {
        Skipped("a string")
    }
    fn scalar(found: &'static str, _: Value) -> Skipped {
        Skipped(found)
    }
    fn list<A: SeqAccess<'de>>(seq: A) -> Result<Skipped, A::Error> {
        skip_list(seq).map(|()| Skipped("a list"))
    }
    fn object<A: MapAccess<'de>>(map: A) -> Result<Skipped, A::Error> {
        skip_object(map).map(|()| Skipped("an object"))
    }
}

impl<'de> Shape<'de> for Leaf<'de> {
    fn string(text: Cow<'de, str>) -> Leaf<'de> {
        Leaf::Text(text)
    }
    fn scalar(_: &'static str, value: Value) -> Leaf<'de> {
        match value {
            Value::Null => Leaf::Null,
            other => Leaf::Other(Box::new(other)),
        }
    }
    fn list<A: SeqAccess<'de>>(seq: A) -> Result<Leaf<'de>, A::Error> {
        Value::deserialize(SeqAccessDeserializer::new(seq)).map(|v| Leaf::Other(Box::new(v)))
    }
    fn object<A: MapAccess<'de>>(map: A) -> Result<Leaf<'de>, A::Error> {
        Value::deserialize(MapAccessDeserializer::new(map)).map(|v| Leaf::Other(Box::new(v)))
    }
}

/// A member name: one the decoder reads, `records`, or another.
enum Member {
    Leaf(Name),
    Records,
    Other,
}

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Member, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Member;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E: Error>(self, v: &str) -> Result<Member, E> {
                Ok(match Name::of(v) {
                    Some(name) => Member::Leaf(name),
                    None if v == "records" => Member::Records,
                    None => Member::Other,
                })
            }
        }
        // As `Value` reads its keys.
        d.deserialize_str(V)
    }
}

fn read_object<'de, A: MapAccess<'de>>(map: A) -> Result<Obj<'de>, A::Error> {
    let mut obj = Obj::default();
    read_object_into(&mut obj, map)?;
    Ok(obj)
}

/// Reads an object's members into `obj`, where it lies: an object is a few hundred bytes, and
/// records are read straight into their list rather than moved there through each caller.
fn read_object_into<'de, A: MapAccess<'de>>(
    obj: &mut Obj<'de>,
    mut map: A,
) -> Result<(), A::Error> {
    while let Some(member) = map.next_key::<Member>()? {
        match member {
            Member::Leaf(name) => obj.set(name, map.next_value()?),
            Member::Records => obj.records = Some(map.next_value()?),
            Member::Other => {
                map.next_value::<Skipped>()?;
            }
        }
    }
    Ok(())
}

fn read_items<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Vec<Item<'de>>, A::Error> {
    let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
    while seq.next_element_seed(ItemInto(&mut items))?.is_some() {}
    Ok(items)
}

/// Reads the next element of a list onto its end: what [`Item`] reads, an object filled in place.
struct ItemInto<'v, 'de>(&'v mut Vec<Item<'de>>);

impl<'de> DeserializeSeed<'de> for ItemInto<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ItemInto<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        self.0.push(Item::Object(Obj::default()));
        match self.0.last_mut() {
            Some(Item::Object(obj)) => read_object_into(obj, map),
            _ => Ok(()),
        }
    }

    // Anything else reads as `Item` reads it.
    fn visit_bool<E: Error>(self, v: bool) -> Result<(), E> {
        self.push(ShapeVisitor(std::marker::PhantomData).visit_bool(v))
    }
    fn visit_i64<E: Error>(self, v: i64) -> Result<(), E> {
        self.push(ShapeVisitor(std::marker::PhantomData).visit_i64(v))
    }
    fn visit_u64<E: Error>(self, v: u64) -> Result<(), E> {
        self.push(ShapeVisitor(std::marker::PhantomData).visit_u64(v))
    }
    fn visit_f64<E: Error>(self, v: f64) -> Result<(), E> {
        self.push(ShapeVisitor(std::marker::PhantomData).visit_f64(v))
    }
    fn visit_borrowed_str<E: Error>(self, v: &'de str) -> Result<(), E> {
        self.push(ShapeVisitor(std::marker::PhantomData).visit_borrowed_str(v))
    }
    fn visit_str<E: Error>(self, v: &str) -> Result<(), E> {
        self.push(ShapeVisitor(std::marker::PhantomData).visit_str(v))
    }
    fn visit_string<E: Error>(self, v: String) -> Result<(), E> {
        self.push(ShapeVisitor(std::marker::PhantomData).visit_string(v))
    }
    fn visit_unit<E: Error>(self) -> Result<(), E> {
        self.push(ShapeVisitor(std::marker::PhantomData).visit_unit())
    }
    fn visit_none<E: Error>(self) -> Result<(), E> {
        self.visit_unit()
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        self.push(ShapeVisitor(std::marker::PhantomData).visit_seq(seq))
    }
}

impl<'de> ItemInto<'_, 'de> {
    fn push<E>(self, item: Result<Item<'de>, E>) -> Result<(), E> {
        self.0.push(item?);
        Ok(())
    }
}

impl<'de> Shape<'de> for Records<'de> {
    fn string(_: Cow<'de, str>) -> Records<'de> {
        Records::NotList("a string")
    }
    fn scalar(found: &'static str, _: Value) -> Records<'de> {
        Records::NotList(found)
    }
    fn list<A: SeqAccess<'de>>(seq: A) -> Result<Records<'de>, A::Error> {
        read_items(seq).map(Records::List)
    }
    fn object<A: MapAccess<'de>>(map: A) -> Result<Records<'de>, A::Error> {
        skip_object(map).map(|()| Records::NotList("an object"))
    }
}

impl<'de> Shape<'de> for Item<'de> {
    fn string(_: Cow<'de, str>) -> Item<'de> {
        Item::NotObject("a string")
    }
    fn scalar(found: &'static str, _: Value) -> Item<'de> {
        Item::NotObject(found)
    }
    fn list<A: SeqAccess<'de>>(seq: A) -> Result<Item<'de>, A::Error> {
        skip_list(seq).map(|()| Item::NotObject("a list"))
    }
    fn object<A: MapAccess<'de>>(map: A) -> Result<Item<'de>, A::Error> {
        read_object(map).map(Item::Object)
    }
}

impl<'de> Shape<'de> for Top<'de> {
    fn string(_: Cow<'de, str>) -> Top<'de> {
        Top::Scalar("a string")
    }
    fn scalar(found: &'static str, _: Value) -> Top<'de> {
        Top::Scalar(found)
    }
    fn list<A: SeqAccess<'de>>(seq: A) -> Result<Top<'de>, A::Error> {
        read_items(seq).map(Top::List)
    }
    fn object<A: MapAccess<'de>>(map: A) -> Result<Top<'de>, A::Error> {
        read_object(map).map(Top::Object)
    }
}

macro_rules! deserialize_by_shape {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                visit(d)
            }
        }
    )*};
}

deserialize_by_shape!(Skipped, Leaf<'de>, Records<'de>, Item<'de>, Top<'de>);

#[cfg(test)]
mod tests {
    use super::*;

    /// Every text parses here exactly when it parses as a `Value`, with the same error, and reads
    /// the same as the `Value` does.
    #[test]
    fn reads_exactly_what_a_value_reads() {
        let texts = [
            r#"{"key":"k","records":[{"id":"a\u0062","id":"c","lastplus":null,"x":[1,{"y":2}]},3,"s",[],null]}"#,
            r#"{"i\u0064":1.50,"diag":{"b":1,"a":[true,false]},"user_email":7}"#,
            r#"[{"id":-0},{"id":1e2,"query_row_count":25.0,"track_title":"t\n\"q\""},{"records":{"a":1}}]"#,
            r#"{"records":"no","key":null,"id":18446744073709551615}"#,
            r#""scalar""#,
            "12",
            "null",
            r#"{"a":1e400}"#,
            r#"{"a":"\ud800"}"#,
            r#"{"a":"\x"}"#,
            r#"{"a":1,}"#,
            r#"[1,2"#,
            r#"{"id":"a"} x"#,
            r#"{"id":"a","id":"a"}"#,
            "",
        ];
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let deep_in_record = format!(
            r#"{{"records":[{{"skip":{}0{}}}]}}"#,
            "[".repeat(130),
            "]".repeat(130)
        );
        for text in texts
            .iter()
            .copied()
            .chain([deep.as_str(), deep_in_record.as_str()])
        {
            let value = serde_json::from_str::<Value>(text);
            let top = serde_json::from_str::<Top>(text);
            match (&value, &top) {
                (Ok(v), Ok(t)) => assert_eq!(&Top::from_value(v), t, "{text}"),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{text}"),
                _ => panic!("{text}: {value:?} but {top:?}"),
            }
            let skipped = serde_json::from_str::<Skipped>(text);
            assert_eq!(skipped.is_ok(), value.is_ok(), "{text}");
        }
    }

    #[test]
    fn plain_strings_are_borrowed_and_escaped_ones_owned() {
        let text = r#"{"id":"alice-1","track_title":"a \"b\""}"#;
        let Ok(Top::Object(o)) = serde_json::from_str::<Top>(text) else {
            panic!("not an object");
        };
        assert!(matches!(
            o.get(Name::Id),
            Some(Leaf::Text(Cow::Borrowed("alice-1")))
        ));
        assert!(
            matches!(o.get(Name::TrackTitle), Some(Leaf::Text(Cow::Owned(s))) if s == "a \"b\"")
        );
        assert_eq!(o.get(Name::Lastplus), None);
    }
}
