//! Lenient JSON leaves and field pickers: Envoy writes numbers as strings and strings as numbers
//! across versions, so leaves are read whatever their type.

use super::*;

/// A JSON leaf kept as evidence instead of failing the whole dump: Envoy writes strings and
/// numbers where we read these, but a hostile or unexpected value must end up reported (e.g. in
/// [`ListenerSummary::rejected`]), not abort parsing or pass silently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonLeaf {
    Text(String),
    Number(u64),
    Bool(bool),
    /// Anything else, named by its JSON type (`"a negative number"`, `"an object"`, ...).
    Other(&'static str),
}

impl JsonLeaf {
    pub(super) fn as_u64(&self) -> Option<u64> {
        match self {
            JsonLeaf::Number(n) => Some(*n),
            _ => None,
        }
    }

    pub(super) fn into_text(self) -> Option<String> {
        match self {
            JsonLeaf::Text(s) => Some(s),
            _ => None,
        }
    }

    /// What kind of JSON value this is, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            JsonLeaf::Text(_) => "text",
            JsonLeaf::Number(_) => "a number",
            JsonLeaf::Bool(_) => "a boolean",
            JsonLeaf::Other(what) => what,
        }
    }
}

impl fmt::Display for JsonLeaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonLeaf::Text(s) => f.write_str(s),
            JsonLeaf::Number(n) => write!(f, "{n}"),
            JsonLeaf::Bool(b) => write!(f, "{b}"),
            JsonLeaf::Other(what) => write!(f, "<{what}>"),
        }
    }
}

impl<'de> Deserialize<'de> for JsonLeaf {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match d.deserialize_any(LeafVisitor)? {
            JsonLeafRef::Text(t) => JsonLeaf::Text(t.into_owned()),
            JsonLeafRef::Number(n) => JsonLeaf::Number(n),
            JsonLeafRef::Bool(b) => JsonLeaf::Bool(b),
            JsonLeafRef::Other(what) => JsonLeaf::Other(what),
        })
    }
}

/// A [`JsonLeaf`] whose text is borrowed from the input when it can be: for leaves that are
/// only looked at, never kept.
pub(super) enum JsonLeafRef<'de> {
    Text(std::borrow::Cow<'de, str>),
    Number(u64),
    Bool(bool),
    Other(&'static str),
}

pub(super) struct LeafVisitor;

impl<'de> Visitor<'de> for LeafVisitor {
    type Value = JsonLeafRef<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(JsonLeafRef::Text(std::borrow::Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(JsonLeafRef::Text(std::borrow::Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(JsonLeafRef::Text(std::borrow::Cow::Owned(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(JsonLeafRef::Number(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(u64::try_from(v).map_or(JsonLeafRef::Other("a negative number"), JsonLeafRef::Number))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(JsonLeafRef::Other("a fractional number"))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(JsonLeafRef::Bool(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(JsonLeafRef::Other("null"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(JsonLeafRef::Other("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(JsonLeafRef::Other("an object"))
    }
}

/// An object key compared with `K::KEY` as it is read, without copying it.
pub(super) struct KeyIs<K>(pub(super) bool, PhantomData<K>);

impl<'de, K: FieldKey> Deserialize<'de> for KeyIs<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let is = matches!(d.deserialize_str(LeafVisitor)?, JsonLeafRef::Text(t) if t == K::KEY);
        Ok(KeyIs(is, PhantomData))
    }
}

/// Names the one string field [`Pick`] extracts.
pub(super) trait FieldKey {
    const KEY: &'static str;
}

/// One string field of an object whose shape we do not control: filters' `typed_config` differ
/// by filter type (e.g. `route_config` is an object in the HTTP connection manager and an array
/// in the Dubbo proxy), so any other shape yields `None` instead of an error.
pub(super) struct Pick<K>(pub(super) Option<String>, PhantomData<K>);

impl<'de, K: FieldKey> Deserialize<'de> for Pick<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PickVisitor::<K>(PhantomData))
    }
}

pub(super) struct PickVisitor<K>(PhantomData<K>);

impl<'de, K: FieldKey> Visitor<'de> for PickVisitor<K> {
    type Value = Pick<K>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Pick<K>, A::Error> {
        let mut found = None;
        while let Some(KeyIs(is_key, _)) = map.next_key::<KeyIs<K>>()? {
            if is_key && found.is_none() {
                found = map.next_value::<JsonLeaf>()?.into_text();
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Pick(found, PhantomData))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Pick<K>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Pick(None, PhantomData))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Pick<K>, E> {
        Ok(Pick(None, PhantomData))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Pick<K>, E> {
        Ok(Pick(None, PhantomData))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Pick<K>, E> {
        Ok(Pick(None, PhantomData))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Pick<K>, E> {
        Ok(Pick(None, PhantomData))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Pick<K>, E> {
        Ok(Pick(None, PhantomData))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Pick<K>, E> {
        Ok(Pick(None, PhantomData))
    }
}

pub(super) struct NameKey;
impl FieldKey for NameKey {
    const KEY: &'static str = "name";
}
pub(super) struct RouteConfigNameKey;
impl FieldKey for RouteConfigNameKey {
    const KEY: &'static str = "route_config_name";
}
