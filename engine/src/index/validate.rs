//! What an upsert or a query may carry: vector lengths and values, ids, contents and metadata
//! sizes and shapes (docs/ARCHITECTURE.md §4.4). Errors name batch positions, never ids or
//! values.

use serde_json::Value;

use crate::error::{Error, Result};
use crate::types::{
    check_centroids, IndexConfig, Item, AUTO, MAX_ABS_COMPONENT, MAX_CONTENTS_LEN, MAX_DIMENSION,
    MAX_ID_LEN, MAX_METADATA_LEN,
};

/// Deepest accepted metadata nesting (objects and arrays).
pub const MAX_METADATA_DEPTH: usize = 32;

fn json_depth(v: &Value) -> usize {
    // Iterative, so hostile nesting cannot overflow the stack here.
    let mut max = 0;
    let mut stack = vec![(v, 1usize)];
    while let Some((v, d)) = stack.pop() {
        max = max.max(d);
        if d > MAX_METADATA_DEPTH {
            break;
        }
        match v {
            Value::Array(a) => stack.extend(a.iter().map(|x| (x, d + 1))),
            Value::Object(o) => stack.extend(o.values().map(|x| (x, d + 1))),
            _ => {}
        }
    }
    max
}

/// Largest number of items accepted in one upsert.
pub const MAX_BATCH: usize = 1_000_000;

/// An item validated and prepared for writing.
pub(super) struct NewItem {
    pub(super) id: String,
    pub(super) vector: Vec<f32>,
    pub(super) prepared: Vec<f32>,
    pub(super) contents: Option<Vec<u8>>,
    pub(super) metadata: Option<String>,
}

/// Checks a vector's length and values; `position` is the item's place in its upsert batch
/// (errors never carry ids or values).
pub(crate) fn check_vector(config: &IndexConfig, v: &[f32], position: Option<usize>) -> Result<()> {
    if v.len() != config.dimension {
        return Err(Error::DimensionMismatch {
            expected: config.dimension,
            got: v.len(),
            position,
        });
    }
    check_values(v, position)
}

/// A query vector against an index that has no dimension yet: any length, finite values.
pub(super) fn check_finite(v: &[f32]) -> Result<()> {
    if v.is_empty() || v.len() > MAX_DIMENSION {
        return Err(Error::InvalidArgument(format!(
            "a query vector must have 1..={MAX_DIMENSION} components, got {}",
            v.len()
        )));
    }
    check_values(v, None)
}

fn check_values(v: &[f32], position: Option<usize>) -> Result<()> {
    if v.iter().any(|x| !x.is_finite()) {
        return Err(Error::NonFiniteVector { position });
    }
    if let Some(at) = v.iter().position(|x| x.abs() > MAX_ABS_COMPONENT) {
        let whose = position.map_or_else(
            || "the query vector".to_owned(),
            |p| format!("the vector of the item at batch position {p}"),
        );
        return Err(Error::InvalidArgument(format!(
            "{whose} has a component of magnitude above {MAX_ABS_COMPONENT:e} (component {at})"
        )));
    }
    Ok(())
}

/// The configuration an upsert of `items` is checked against: `config` itself, or, while its
/// dimension is still [`AUTO`] (no upsert yet), `config` with the first item's dimension.
pub(super) fn detect_dimension(config: &IndexConfig, items: &[Item]) -> Result<IndexConfig> {
    let mut config = config.clone();
    if config.dimension != AUTO {
        return Ok(config);
    }
    let Some(first) = items.first() else {
        return Ok(config);
    };
    let dim = first.vector.len();
    if dim == 0 || dim > MAX_DIMENSION {
        return Err(Error::InvalidArgument(format!(
            "the index takes its dimension from the first upserted vector, which must have \
             1..={MAX_DIMENSION} components; the item at batch position 0 has {dim}"
        )));
    }
    check_centroids(config.n_lists, dim).map_err(Error::InvalidArgument)?;
    config.dimension = dim;
    Ok(config)
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(super) fn prepare_items(config: &IndexConfig, items: Vec<Item>) -> Result<Vec<NewItem>> {
    if items.len() > MAX_BATCH {
        return Err(Error::InvalidArgument(format!(
            "at most {MAX_BATCH} items per upsert, got {}",
            items.len()
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    let mut out = Vec::with_capacity(items.len());
    for (pos, item) in items.into_iter().enumerate() {
        if item.id.is_empty() || item.id.len() > MAX_ID_LEN {
            return Err(Error::InvalidArgument(format!(
                "item ids must be 1..={MAX_ID_LEN} bytes, got {} bytes at batch position {pos}",
                item.id.len()
            )));
        }
        if !seen.insert(item.id.clone()) {
            return Err(Error::DuplicateId(pos));
        }
        check_vector(config, &item.vector, Some(pos))?;
        if let Some(c) = &item.contents {
            if c.len() > MAX_CONTENTS_LEN {
                return Err(Error::InvalidArgument(format!(
                    "contents of the item at batch position {pos} are {} bytes, at most \
                     {MAX_CONTENTS_LEN} are accepted",
                    c.len()
                )));
            }
        }
        let metadata = match item.metadata {
            None => None,
            Some(m @ Value::Object(_)) if json_depth(&m) <= MAX_METADATA_DEPTH => {
                let json = m.to_string();
                if json.len() > MAX_METADATA_LEN {
                    return Err(Error::InvalidArgument(format!(
                        "metadata of the item at batch position {pos} is {} bytes as JSON, at \
                         most {MAX_METADATA_LEN} are accepted",
                        json.len()
                    )));
                }
                Some(json)
            }
            Some(Value::Object(_)) => {
                return Err(Error::InvalidArgument(format!(
                    "metadata of the item at batch position {pos} is nested deeper than \
                     {MAX_METADATA_DEPTH} levels"
                )))
            }
            Some(other) => {
                return Err(Error::InvalidArgument(format!(
                    "metadata of the item at batch position {pos} must be a JSON object, got {}",
                    json_type(&other)
                )))
            }
        };
        out.push(NewItem {
            prepared: config.metric.prepare(&item.vector),
            id: item.id,
            vector: item.vector,
            contents: item.contents,
            metadata,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_checks_name_positions_not_ids() {
        let cfg = IndexConfig::new(2);
        assert!(check_vector(&cfg, &[1e15, -1e15], Some(0)).is_ok());
        let err = check_vector(&cfg, &[0.0, 2e15], Some(4)).unwrap_err();
        assert!(err.to_string().contains("batch position 4"), "{err}");
        let err = check_vector(&cfg, &[0.0, -2e15], None).unwrap_err();
        assert!(err.to_string().contains("query vector"), "{err}");
    }
}
