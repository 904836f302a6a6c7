//! A statement under construction: SQL text made only of constants, and
//! the values it refers to as `{name:Type}` query parameters, bound when the
//! statement becomes a `clickhouse` query.

use clickhouse::Client;
use clickhouse::query::Query;

/// A value bound to a `{name:Type}` slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Param {
    /// `String` (and enums compared by name).
    Str(String),
    /// `Int64`.
    I64(i64),
    /// `UInt32`.
    U32(u32),
    /// `Bool`.
    Bool(bool),
    /// `Array(UUID)`, as the UUIDs' text forms.
    Uuids(Vec<String>),
}

/// SQL text plus its bound parameters.
#[derive(Debug, Clone, Default)]
pub(crate) struct Statement {
    text: String,
    params: Vec<(&'static str, Param)>,
}

impl Statement {
    /// A statement starting with `text`.
    pub(crate) fn new(text: &str) -> Self {
        Self { text: text.to_owned(), params: Vec::new() }
    }

    /// Appends constant SQL text. Never pass a value from a request here.
    pub(crate) fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Binds `value` to the slot `{name:Type}` the text refers to.
    pub(crate) fn bind(&mut self, name: &'static str, value: Param) -> &mut Self {
        debug_assert!(self.params.iter().all(|(existing, _)| *existing != name), "parameter {name} bound twice");
        self.params.push((name, value));
        self
    }

    /// The SQL text (values are not in it).
    #[cfg(test)]
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// The value bound to `name`.
    #[cfg(test)]
    pub(crate) fn param(&self, name: &str) -> Option<&Param> {
        self.params.iter().find(|(bound, _)| *bound == name).map(|(_, value)| value)
    }

    /// The statement as a query on `client`, every value bound.
    pub(crate) fn query(&self, client: &Client) -> Query {
        let mut query = client.query(&self.text);
        for (name, value) in &self.params {
            query = match value {
                Param::Str(v) => query.param(name, v.as_str()),
                Param::I64(v) => query.param(name, v),
                Param::U32(v) => query.param(name, v),
                Param::Bool(v) => query.param(name, v),
                Param::Uuids(v) => query.param(name, v),
            };
        }
        query
    }
}
