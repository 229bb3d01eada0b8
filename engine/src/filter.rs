//! MongoDB-style metadata filters (docs/ARCHITECTURE.md §4.4: "`$exists $eq $ne $in $nin $gt
//! $gte $lt $lte $and`", plus `$or`).
//!
//! A filter is a JSON object. Keys are field paths (dots reach into nested objects) or the
//! logical operators `$and` / `$or`, whose value is a non-empty array of filters. A field's
//! condition is either a plain value (equality) or an object of operators:
//!
//! ```
//! use serde_json::json;
//! use tkms_engine::Filter;
//!
//! let f = Filter::parse(&json!({
//!     "genre": {"$in": ["jazz", "blues"]},
//!     "$or": [{"year": {"$gte": 1960, "$lt": 1970}}, {"remastered": true}],
//!     "label.country": "US"
//! })).unwrap();
//! let meta = json!({"genre": "jazz", "year": 1965, "label": {"country": "US"}});
//! assert!(f.matches(Some(&meta)));
//! assert!(Filter::parse(&json!({"year": {"$near": 3}})).is_err());
//! ```
//!
//! Semantics follow MongoDB where it matters: `$ne`/`$nin` also match items without the
//! field; a condition on an array field matches when any element matches; numbers compare by
//! value (`1 == 1.0`); ordering operators compare numbers with numbers and strings with
//! strings and never match across types.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

const MAX_DEPTH: usize = 32;

/// A parsed, validated metadata filter.
#[derive(Clone, Debug, PartialEq)]
pub struct Filter(Node);

#[derive(Clone, Debug, PartialEq)]
enum Node {
    And(Vec<Node>),
    Or(Vec<Node>),
    Field(Vec<String>, Cond),
}

#[derive(Clone, Debug, PartialEq)]
enum Cond {
    Exists(bool),
    Eq(Value),
    Ne(Value),
    In(Vec<Value>),
    Nin(Vec<Value>),
    Cmp(Ordering, bool, Value), // (direction, or-equal, operand)
}

fn bad(msg: impl Into<String>) -> Error {
    Error::InvalidFilter(msg.into())
}

impl Filter {
    /// Parses and validates a filter; any unknown operator or ill-typed operand is an error.
    pub fn parse(value: &Value) -> Result<Self> {
        Ok(Self(parse_object(value, 0)?))
    }

    /// Whether an item's metadata (absent metadata behaves as `{}`) satisfies the filter.
    pub fn matches(&self, metadata: Option<&Value>) -> bool {
        eval(&self.0, metadata)
    }
}

fn parse_object(value: &Value, depth: usize) -> Result<Node> {
    if depth > MAX_DEPTH {
        return Err(bad(format!("nested deeper than {MAX_DEPTH} levels")));
    }
    let obj = value
        .as_object()
        .ok_or_else(|| bad(format!("expected a JSON object, got `{value}`")))?;
    let mut nodes = Vec::with_capacity(obj.len());
    for (key, v) in obj {
        match key.as_str() {
            "$and" | "$or" => {
                let arr = v
                    .as_array()
                    .filter(|a| !a.is_empty())
                    .ok_or_else(|| bad(format!("`{key}` needs a non-empty array of filters")))?;
                let subs = arr
                    .iter()
                    .map(|s| parse_object(s, depth + 1))
                    .collect::<Result<Vec<_>>>()?;
                nodes.push(if key == "$and" {
                    Node::And(subs)
                } else {
                    Node::Or(subs)
                });
            }
            k if k.starts_with('$') => {
                return Err(bad(format!(
                    "unknown top-level operator `{k}` (use $and / $or, or a field name)"
                )))
            }
            "" => return Err(bad("empty field name")),
            field => {
                let path: Vec<String> = field.split('.').map(str::to_owned).collect();
                if path.iter().any(String::is_empty) {
                    return Err(bad(format!("invalid field path `{field}`")));
                }
                nodes.extend(parse_conditions(&path, v)?);
            }
        }
    }
    Ok(if nodes.len() == 1 {
        nodes.remove(0)
    } else {
        Node::And(nodes)
    })
}

fn parse_conditions(path: &[String], v: &Value) -> Result<Vec<Node>> {
    let field = path.join(".");
    let ops = match v {
        Value::Object(m) if m.keys().any(|k| k.starts_with('$')) => m,
        _ => return Ok(vec![Node::Field(path.to_vec(), Cond::Eq(v.clone()))]),
    };
    if ops.keys().any(|k| !k.starts_with('$')) {
        return Err(bad(format!(
            "field `{field}` mixes operators and plain keys"
        )));
    }
    ops.iter()
        .map(|(op, operand)| parse_op(&field, op, operand).map(|c| Node::Field(path.to_vec(), c)))
        .collect()
}

fn parse_op(field: &str, op: &str, operand: &Value) -> Result<Cond> {
    let list = |operand: &Value| {
        operand
            .as_array()
            .cloned()
            .ok_or_else(|| bad(format!("`{op}` on `{field}` needs an array")))
    };
    let comparable = |operand: &Value, ord, eq| match operand {
        Value::Number(_) | Value::String(_) => Ok(Cond::Cmp(ord, eq, operand.clone())),
        _ => Err(bad(format!(
            "`{op}` on `{field}` needs a number or a string, got `{operand}`"
        ))),
    };
    match op {
        "$exists" => operand
            .as_bool()
            .map(Cond::Exists)
            .ok_or_else(|| bad(format!("`$exists` on `{field}` needs true or false"))),
        "$eq" => Ok(Cond::Eq(operand.clone())),
        "$ne" => Ok(Cond::Ne(operand.clone())),
        "$in" => list(operand).map(Cond::In),
        "$nin" => list(operand).map(Cond::Nin),
        "$gt" => comparable(operand, Ordering::Greater, false),
        "$gte" => comparable(operand, Ordering::Greater, true),
        "$lt" => comparable(operand, Ordering::Less, false),
        "$lte" => comparable(operand, Ordering::Less, true),
        other => Err(bad(format!("unknown operator `{other}` on `{field}`"))),
    }
}

fn lookup<'a>(meta: Option<&'a Value>, path: &[String]) -> Option<&'a Value> {
    let mut cur = meta?;
    for p in path {
        cur = cur
            .as_object()
            .and_then(|m: &Map<String, Value>| m.get(p))?;
    }
    Some(cur)
}

fn eval(node: &Node, meta: Option<&Value>) -> bool {
    match node {
        Node::And(ns) => ns.iter().all(|n| eval(n, meta)),
        Node::Or(ns) => ns.iter().any(|n| eval(n, meta)),
        Node::Field(path, cond) => {
            let v = lookup(meta, path);
            match cond {
                Cond::Exists(want) => v.is_some() == *want,
                Cond::Eq(x) => v.is_some_and(|v| matches_eq(v, x)),
                Cond::Ne(x) => !v.is_some_and(|v| matches_eq(v, x)),
                Cond::In(xs) => v.is_some_and(|v| xs.iter().any(|x| matches_eq(v, x))),
                Cond::Nin(xs) => !v.is_some_and(|v| xs.iter().any(|x| matches_eq(v, x))),
                Cond::Cmp(ord, or_eq, x) => v.is_some_and(|v| matches_cmp(v, *ord, *or_eq, x)),
            }
        }
    }
}

fn value_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => x == y,
        },
        _ => a == b,
    }
}

fn matches_eq(field: &Value, x: &Value) -> bool {
    value_eq(field, x)
        || matches!(field, Value::Array(items) if items.iter().any(|i| value_eq(i, x)))
}

fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn matches_cmp(field: &Value, ord: Ordering, or_eq: bool, x: &Value) -> bool {
    let one =
        |v: &Value| compare(v, x).is_some_and(|o| o == ord || (or_eq && o == Ordering::Equal));
    one(field) || matches!(field, Value::Array(items) if items.iter().any(one))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn m(f: &Value, meta: &Value) -> bool {
        Filter::parse(f).unwrap().matches(Some(meta))
    }

    #[test]
    fn operators() {
        let meta = json!({"a": 5, "s": "kiwi", "tags": ["x", "y"], "n": {"d": 1.0}, "b": false});
        assert!(m(&json!({"a": 5}), &meta));
        assert!(m(&json!({"a": 5.0}), &meta));
        assert!(m(&json!({"a": {"$eq": 5}}), &meta));
        assert!(m(&json!({"a": {"$ne": 4}}), &meta));
        assert!(m(&json!({"missing": {"$ne": 4}}), &meta));
        assert!(!m(&json!({"missing": {"$eq": 4}}), &meta));
        assert!(m(&json!({"a": {"$gt": 4, "$lte": 5}}), &meta));
        assert!(!m(&json!({"a": {"$gt": 5}}), &meta));
        assert!(m(&json!({"a": {"$gte": 5, "$lt": 6}}), &meta));
        assert!(m(&json!({"s": {"$gt": "apple"}}), &meta));
        assert!(!m(&json!({"s": {"$gt": 3}}), &meta));
        assert!(m(&json!({"s": {"$in": ["kiwi", "fig"]}}), &meta));
        assert!(m(&json!({"s": {"$nin": ["fig"]}}), &meta));
        assert!(m(&json!({"tags": "y"}), &meta));
        assert!(m(&json!({"tags": {"$in": ["z", "x"]}}), &meta));
        assert!(m(&json!({"n.d": 1}), &meta));
        assert!(m(
            &json!({"n.d": {"$exists": true}, "zz": {"$exists": false}}),
            &meta
        ));
        assert!(m(&json!({"b": false}), &meta));
        assert!(m(&json!({"$or": [{"a": 1}, {"s": "kiwi"}]}), &meta));
        assert!(!m(&json!({"$and": [{"a": 5}, {"s": "fig"}]}), &meta));
        assert!(m(&json!({"n": {"d": 1.0}}), &meta));
        assert!(!Filter::parse(&json!({"a": 1})).unwrap().matches(None));
        assert!(Filter::parse(&json!({"a": {"$ne": 1}}))
            .unwrap()
            .matches(None));
    }

    #[test]
    fn rejects_bad_filters() {
        for f in [
            json!([1]),
            json!({"$nor": []}),
            json!({"$and": []}),
            json!({"$or": {"a": 1}}),
            json!({"a": {"$in": 3}}),
            json!({"a": {"$gt": [1]}}),
            json!({"a": {"$exists": 1}}),
            json!({"a": {"$foo": 1}}),
            json!({"a": {"$eq": 1, "plain": 2}}),
            json!({"a..b": 1}),
            json!({"": 1}),
        ] {
            assert!(
                matches!(Filter::parse(&f), Err(Error::InvalidFilter(_))),
                "{f} should be rejected"
            );
        }
        let mut deep = json!({"a": 1});
        for _ in 0..40 {
            deep = json!({ "$and": [deep] });
        }
        assert!(Filter::parse(&deep).is_err());
    }
}
