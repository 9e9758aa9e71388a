//! An upper bound of the length of a value's JSON encoding, found without encoding it.
//!
//! `record_check` bounds a peer's service record by the bound kept for the held record plus
//! the new spec; the exact length of that spec (`records::json_bytes`) costs as much as
//! encoding it: every string scanned for escapes, every number formatted, every token
//! written. The bound here walks the same `Serialize` impl, so it follows the derive as the
//! spec grows fields, and counts each token at its widest as `serde_json` writes it
//! (compact): a string of `n` bytes at `6n + 2` (every byte escaped as `\u00XX`, and its
//! quotes), an integer at 20 digits (40 for 128 bits), a float at 25, and the exact
//! punctuation of arrays and objects around them. It is not meant to be tight: only to
//! be at least the encoded length and cheap.

use std::fmt;

use serde::ser::{
    self, Serialize, SerializeMap, SerializeSeq, SerializeStruct, SerializeStructVariant,
    SerializeTuple, SerializeTupleStruct, SerializeTupleVariant, Serializer,
};

/// At least the length of `value`'s compact JSON encoding by `serde_json` (`usize::MAX` if
/// its `Serialize` impl fails).
pub(crate) fn json_bytes_max(value: &(impl Serialize + ?Sized)) -> usize {
    let mut bound = Bound(0);
    match value.serialize(&mut bound) {
        Ok(()) => bound.0,
        Err(_) => usize::MAX,
    }
}

/// Widest encodings of a JSON token.
const ESCAPED_BYTE_MAX: usize = r"\u001f".len();
const QUOTES: usize = 2;
const INTEGER_64_MAX: usize = "-9223372036854775808".len();
const INTEGER_128_MAX: usize = "-170141183460469231731687303715884105728".len();
/// `ryu` writes an f64 in at most 24 bytes; a non-finite one is `null`.
const FLOAT_MAX: usize = 25;
const CHAR_MAX: usize = QUOTES + ESCAPED_BYTE_MAX;

fn string_max(length: usize) -> usize {
    length
        .saturating_mul(ESCAPED_BYTE_MAX)
        .saturating_add(QUOTES)
}

/// The running bound.
struct Bound(usize);

impl Bound {
    fn add(&mut self, bytes: usize) {
        self.0 = self.0.saturating_add(bytes);
    }

    /// `"name":` (a key of an object, or the name of an enum variant's wrapper object).
    fn key(&mut self, name: &str) {
        self.add(string_max(name.len()) + ":".len());
    }
}

/// A `Serialize` impl's own error (as `serde_json` would report it).
#[derive(Debug)]
pub(crate) struct Unencodable(String);

impl fmt::Display for Unencodable {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for Unencodable {}

impl ser::Error for Unencodable {
    fn custom<T: fmt::Display>(message: T) -> Self {
        Unencodable(message.to_string())
    }
}

impl<'a> Serializer for &'a mut Bound {
    type Ok = ();
    type Error = Unencodable;
    type SerializeSeq = Compound<'a>;
    type SerializeTuple = Compound<'a>;
    type SerializeTupleStruct = Compound<'a>;
    type SerializeTupleVariant = Compound<'a>;
    type SerializeMap = Compound<'a>;
    type SerializeStruct = Compound<'a>;
    type SerializeStructVariant = Compound<'a>;

    fn serialize_bool(self, _: bool) -> Result<(), Unencodable> {
        self.add("false".len());
        Ok(())
    }

    fn serialize_i8(self, _: i8) -> Result<(), Unencodable> {
        self.add(INTEGER_64_MAX);
        Ok(())
    }

    fn serialize_i16(self, _: i16) -> Result<(), Unencodable> {
        self.add(INTEGER_64_MAX);
        Ok(())
    }

    fn serialize_i32(self, _: i32) -> Result<(), Unencodable> {
        self.add(INTEGER_64_MAX);
        Ok(())
    }

    fn serialize_i64(self, _: i64) -> Result<(), Unencodable> {
        self.add(INTEGER_64_MAX);
        Ok(())
    }

    fn serialize_i128(self, _: i128) -> Result<(), Unencodable> {
        self.add(INTEGER_128_MAX);
        Ok(())
    }

    fn serialize_u8(self, _: u8) -> Result<(), Unencodable> {
        self.add(INTEGER_64_MAX);
        Ok(())
    }

    fn serialize_u16(self, _: u16) -> Result<(), Unencodable> {
        self.add(INTEGER_64_MAX);
        Ok(())
    }

    fn serialize_u32(self, _: u32) -> Result<(), Unencodable> {
        self.add(INTEGER_64_MAX);
        Ok(())
    }

    fn serialize_u64(self, _: u64) -> Result<(), Unencodable> {
        self.add(INTEGER_64_MAX);
        Ok(())
    }

    fn serialize_u128(self, _: u128) -> Result<(), Unencodable> {
        self.add(INTEGER_128_MAX);
        Ok(())
    }

    fn serialize_f32(self, _: f32) -> Result<(), Unencodable> {
        self.add(FLOAT_MAX);
        Ok(())
    }

    fn serialize_f64(self, _: f64) -> Result<(), Unencodable> {
        self.add(FLOAT_MAX);
        Ok(())
    }

    fn serialize_char(self, _: char) -> Result<(), Unencodable> {
        self.add(CHAR_MAX);
        Ok(())
    }

    fn serialize_str(self, text: &str) -> Result<(), Unencodable> {
        self.add(string_max(text.len()));
        Ok(())
    }

    /// An array of numbers, each at most `255,`.
    fn serialize_bytes(self, bytes: &[u8]) -> Result<(), Unencodable> {
        self.add(bytes.len().saturating_mul("255,".len()).saturating_add(2));
        Ok(())
    }

    fn serialize_none(self) -> Result<(), Unencodable> {
        self.add("null".len());
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Unencodable> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), Unencodable> {
        self.add("null".len());
        Ok(())
    }

    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Unencodable> {
        self.add("null".len());
        Ok(())
    }

    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), Unencodable> {
        self.add(string_max(variant.len()));
        Ok(())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Unencodable> {
        value.serialize(self)
    }

    /// `{"variant":value}`.
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Unencodable> {
        self.add("{}".len());
        self.key(variant);
        value.serialize(self)
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Compound<'a>, Unencodable> {
        Ok(Compound::open(self))
    }

    fn serialize_tuple(self, _: usize) -> Result<Compound<'a>, Unencodable> {
        Ok(Compound::open(self))
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Compound<'a>, Unencodable> {
        Ok(Compound::open(self))
    }

    /// `{"variant":[...]}`.
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Compound<'a>, Unencodable> {
        Ok(Compound::wrapped(self, variant))
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Compound<'a>, Unencodable> {
        Ok(Compound::open(self))
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Compound<'a>, Unencodable> {
        Ok(Compound::open(self))
    }

    /// `{"variant":{...}}`.
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Compound<'a>, Unencodable> {
        Ok(Compound::wrapped(self, variant))
    }
}

/// An array or an object being bounded: its brackets are counted when it opens, and a
/// separator (`,`) before every element or entry (one more than the encoding has for a
/// non-empty one).
struct Compound<'a> {
    bound: &'a mut Bound,
}

impl<'a> Compound<'a> {
    fn open(bound: &'a mut Bound) -> Self {
        bound.add("[]".len());
        Compound { bound }
    }

    /// An enum variant's array or object, inside its wrapper object `{"variant":...}`.
    fn wrapped(bound: &'a mut Bound, variant: &str) -> Self {
        bound.add("{}".len());
        bound.key(variant);
        Compound::open(bound)
    }

    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unencodable> {
        self.bound.add(",".len());
        value.serialize(&mut *self.bound)
    }

    fn field<T: Serialize + ?Sized>(&mut self, name: &str, value: &T) -> Result<(), Unencodable> {
        self.bound.add(",".len());
        self.bound.key(name);
        value.serialize(&mut *self.bound)
    }
}

/// The four kinds of array (`[a,b]`, and a tuple variant's inside its wrapper object) are
/// bounded alike; only the method's name differs.
macro_rules! array_of_elements {
    ($($kind:ident :: $method:ident),*) => {$(
        impl $kind for Compound<'_> {
            type Ok = ();
            type Error = Unencodable;

            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unencodable> {
                self.element(value)
            }

            fn end(self) -> Result<(), Unencodable> {
                Ok(())
            }
        }
    )*};
}

array_of_elements!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl SerializeMap for Compound<'_> {
    type Ok = ();
    type Error = Unencodable;

    /// A key that is not a string (a number, say) is quoted by `serde_json`: two more.
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Unencodable> {
        self.bound.add(",".len() + QUOTES + ":".len());
        key.serialize(&mut *self.bound)
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unencodable> {
        value.serialize(&mut *self.bound)
    }

    fn end(self) -> Result<(), Unencodable> {
        Ok(())
    }
}

/// A struct's fields and a struct variant's (inside its wrapper object) are bounded alike.
macro_rules! object_of_fields {
    ($($kind:ident),*) => {$(
        impl $kind for Compound<'_> {
            type Ok = ();
            type Error = Unencodable;

            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                name: &'static str,
                value: &T,
            ) -> Result<(), Unencodable> {
                self.field(name, value)
            }

            fn end(self) -> Result<(), Unencodable> {
                Ok(())
            }
        }
    )*};
}

object_of_fields!(SerializeStruct, SerializeStructVariant);

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde::Serialize;

    use super::*;
    use uhlc::{ID, NTP64, Timestamp};

    use crate::records::json_bytes;
    use crate::rollout::{PastVersion, ServiceRecord};
    use crate::{HealthCheck, ServiceSpec};

    /// Every shape `serde` has: what a derive can ask of the bound.
    #[derive(Debug, Clone, Serialize)]
    enum Shape {
        Unit,
        Newtype(String),
        Tuple(i64, u8, char),
        Struct {
            wide: u128,
            narrow: i128,
            ratio: f64,
        },
    }

    #[derive(Debug, Clone, Serialize)]
    struct UnitStruct;

    #[derive(Debug, Clone, Serialize)]
    struct Wrapper(f32);

    #[derive(Debug, Clone, Serialize)]
    struct Everything {
        flag: bool,
        shapes: Vec<Shape>,
        by_number: BTreeMap<u16, Option<String>>,
        #[serde(with = "serde_bytes_as_slice")]
        bytes: Vec<u8>,
        unit: (),
        unit_struct: UnitStruct,
        wrapper: Wrapper,
        pair: (i8, i16),
        maybe: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        skipped: Option<u64>,
    }

    /// `serialize_bytes`, which a `Vec<u8>` does not use on its own.
    mod serde_bytes_as_slice {
        pub fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(bytes)
        }
    }

    fn shape() -> impl Strategy<Value = Shape> {
        prop_oneof![
            Just(Shape::Unit),
            any::<String>().prop_map(Shape::Newtype),
            (any::<i64>(), any::<u8>(), any::<char>()).prop_map(|(a, b, c)| Shape::Tuple(a, b, c)),
            (any::<u128>(), any::<i128>(), any::<f64>()).prop_map(|(wide, narrow, ratio)| {
                Shape::Struct {
                    wide,
                    narrow,
                    ratio,
                }
            }),
        ]
    }

    fn everything() -> impl Strategy<Value = Everything> {
        (
            any::<bool>(),
            prop::collection::vec(shape(), 0..6),
            prop::collection::btree_map(any::<u16>(), any::<Option<String>>(), 0..6),
            prop::collection::vec(any::<u8>(), 0..40),
            any::<f32>(),
            any::<(i8, i16)>(),
            any::<Option<u32>>(),
            any::<Option<u64>>(),
        )
            .prop_map(
                |(flag, shapes, by_number, bytes, wrapper, pair, maybe, skipped)| Everything {
                    flag,
                    shapes,
                    by_number,
                    bytes,
                    unit: (),
                    unit_struct: UnitStruct,
                    wrapper: Wrapper(wrapper),
                    pair,
                    maybe,
                    skipped,
                },
            )
    }

    /// A spec with any text (control characters, quotes, backslashes, any script) in its
    /// strings, and a health check or not: what `record_check` bounds.
    fn spec() -> impl Strategy<Value = ServiceSpec> {
        (
            any::<String>(),
            prop::collection::vec(any::<String>(), 0..5),
            prop::collection::btree_map(any::<String>(), any::<String>(), 0..5),
            any::<u32>(),
            prop::collection::vec(any::<String>(), 0..3),
            any::<Option<String>>(),
            any::<Option<(Option<String>, u64)>>(),
        )
            .prop_map(|(image, command, env, replicas, ports, spread, health)| {
                let mut spec = ServiceSpec::new(image);
                spec.command = command;
                spec.env = env;
                spec.replicas = replicas;
                spec.ports = ports;
                spec.spread = spread;
                spec.resources.memory_bytes = u64::MAX;
                spec.health = health.map(|(http, interval_ms)| {
                    Box::new(HealthCheck {
                        http,
                        tcp: Some(u16::MAX),
                        cmd: None,
                        interval_ms,
                        timeout_ms: 1,
                        retries: u32::MAX,
                        start_period_ms: 0,
                    })
                });
                spec
            })
    }

    /// A record as a replica holds one: a spec, earlier versions with their stamps, failure
    /// reasons with any text, rollback marks.
    fn record() -> impl Strategy<Value = ServiceRecord> {
        let stamp = (any::<u64>(), 1..=u128::MAX).prop_map(|(time, id)| {
            Timestamp::new(NTP64(time), ID::try_from(id).expect("a non-zero id"))
        });
        let past = (
            spec(),
            stamp.clone(),
            any::<Option<String>>(),
            prop::option::of(stamp.clone()),
        )
            .prop_map(|(spec, version, failed, rollback_of)| PastVersion {
                spec,
                version,
                failed,
                rollback_of,
            });
        (
            spec(),
            prop::collection::vec(past, 0..6),
            any::<Option<String>>(),
            prop::option::of(stamp),
        )
            .prop_map(|(spec, history, failed, rollback_of)| ServiceRecord {
                spec,
                history,
                failed,
                rollback_of,
            })
    }

    /// Text that escapes the most: control characters, quotes and backslashes, with a little
    /// of anything else.
    fn escaping_text() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                4 => (0u32..0x20).prop_map(|code| char::from_u32(code).expect("a control")),
                1 => Just('"'),
                1 => Just('\\'),
                1 => any::<char>(),
            ],
            0..64,
        )
        .prop_map(|chars| chars.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// What `record_check` bounds a held record with when it kept no bound.
        #[test]
        fn a_record_is_bounded(record in record()) {
            prop_assert!(json_bytes_max(&record) >= record.encoded_bytes());
        }

        /// A string alone, with no other token's slack to hide a short count.
        #[test]
        fn a_string_is_bounded(text in escaping_text()) {
            prop_assert!(json_bytes_max(&text) >= json_bytes(&text));
            prop_assert!(json_bytes_max(&[(text.clone(), text.clone())]) >= json_bytes(&[(text.clone(), text)]));
        }

        #[test]
        fn every_shape_is_bounded(value in everything()) {
            let exact = serde_json::to_vec(&value).expect("encodes").len();
            prop_assert!(json_bytes_max(&value) >= exact);
        }

        #[test]
        fn a_spec_is_bounded(spec in spec()) {
            prop_assert!(json_bytes_max(&spec) >= json_bytes(&spec));
        }
    }

    /// Each token at its widest, alone: no other token's slack hides a short count.
    #[test]
    fn the_widest_tokens_are_bounded() {
        fn bounded(value: &impl Serialize) {
            let exact = serde_json::to_vec(value).expect("encodes").len();
            assert!(json_bytes_max(value) >= exact, "{exact} bytes");
        }
        bounded(&i64::MIN);
        bounded(&u64::MAX);
        bounded(&i128::MIN);
        bounded(&u128::MAX);
        bounded(&-f64::MIN_POSITIVE);
        bounded(&-1.234_567_890_123_456_7e-300_f64);
        bounded(&f64::NAN);
        bounded(&-f32::MIN_POSITIVE);
        bounded(&'\u{1}');
        bounded(&'\u{10ffff}');
        bounded(&"\u{0}".repeat(100));
        bounded(&"\u{1f}\"\\".repeat(100));
        bounded(&[255u8; 0]);
        bounded(&Shape::Newtype("\u{0}".repeat(10)));
        bounded(&Shape::Tuple(i64::MIN, u8::MAX, '\u{0}'));
        bounded(&Shape::Struct {
            wide: u128::MAX,
            narrow: i128::MIN,
            ratio: f64::MAX,
        });
        let mut by_number = BTreeMap::new();
        by_number.insert(u16::MAX, Some("\u{0}".repeat(10)));
        bounded(&by_number);
    }

    /// A plain spec's bound is within a small multiple of its length: its strings are most
    /// of it, taken at six bytes per byte.
    #[test]
    fn a_plain_spec_is_not_bounded_far_above_its_length() {
        let spec = ServiceSpec::new("/var/lib/shoal/images/web");
        let (exact, bound) = (json_bytes(&spec), json_bytes_max(&spec));
        assert!(bound >= exact);
        assert!(bound <= 6 * exact, "{bound} for {exact} bytes");
    }

    #[test]
    fn a_failing_impl_has_no_bound() {
        struct Failing;
        impl Serialize for Failing {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("no"))
            }
        }
        assert_eq!(json_bytes_max(&Failing), usize::MAX);
    }
}
