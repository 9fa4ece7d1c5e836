//! Runs the plan's MongoDB statements on a document in memory, as the
//! server would, so a rebuild can fold every event of a chunk into final
//! documents and insert each once (docs/design.md §16).
//!
//! Only the shapes `plan` builds are understood (`statements.rs`, the
//! `$addToSet`, `$inc` and `$set` updates of `connection.rs` and
//! `counted.rs`); anything else is an `Unsupported` error, never a guess,
//! and the rebuild then leaves the rest to the statement-per-event path.
//! The replay tests compare folded views with those the server built.

use mongodb::bson::{Bson, Document};

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("the in-memory fold does not know {0}")]
pub struct Unsupported(pub String);

fn unsupported(what: impl std::fmt::Display) -> Unsupported {
    Unsupported(what.to_string())
}

/// A value as an aggregation expression yields it: a missing field is not
/// a null (`$set` of a missing value removes the field).
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Missing,
    Present(Bson),
}

impl Value {
    fn or_null(self) -> Bson {
        match self {
            Value::Missing => Bson::Null,
            Value::Present(v) => v,
        }
    }

    fn is_nullish(&self) -> bool {
        matches!(self, Value::Missing | Value::Present(Bson::Null | Bson::Undefined))
    }
}

/// `document` after the update statement `statement` (`{q, u, upsert}`):
/// `None` when there is none (absent before and no upsert).
pub fn apply_update(document: Option<Document>, statement: &Document) -> Result<Option<Document>, Unsupported> {
    let upsert = statement.get_bool("upsert").unwrap_or(false);
    let current = match document {
        Some(current) => current,
        None if upsert => upsert_seed(statement)?,
        None => return Ok(None),
    };
    let updated = match statement.get("u") {
        Some(Bson::Array(stages)) => stages.iter().try_fold(current, apply_stage)?,
        Some(Bson::Document(operators)) => apply_operators(current, operators)?,
        other => return Err(unsupported(format_args!("the update {other:?}"))),
    };
    Ok(Some(updated))
}

/// An upsert starts from the query's `_id`, the only filter plans use.
fn upsert_seed(statement: &Document) -> Result<Document, Unsupported> {
    let query = statement.get_document("q").map_err(|_| unsupported("a statement without a query"))?;
    match (query.len(), query.get("_id")) {
        (1, Some(id)) if !matches!(id, Bson::Document(_)) => Ok(mongodb::bson::doc! { "_id": id.clone() }),
        _ => Err(unsupported(format_args!("the filter {query}"))),
    }
}

fn apply_stage(current: Document, stage: &Bson) -> Result<Document, Unsupported> {
    let Bson::Document(stage) = stage else { return Err(unsupported(format_args!("the stage {stage}"))) };
    let Some((name, argument)) = stage.iter().next().filter(|_| stage.len() == 1) else {
        return Err(unsupported(format_args!("the stage {stage}")));
    };
    match (name.as_str(), argument) {
        ("$set" | "$addFields", Bson::Document(fields)) => {
            // Every expression sees the document as it was before the stage.
            let values: Vec<(String, Value)> = fields
                .iter()
                .map(|(field, expression)| Ok((field.clone(), evaluate(expression, &current)?)))
                .collect::<Result<_, Unsupported>>()?;
            let mut next = current;
            for (field, value) in values {
                match value {
                    Value::Missing => {
                        next.remove(&field);
                    }
                    Value::Present(value) => {
                        next.insert(field, value);
                    }
                }
            }
            Ok(next)
        }
        ("$replaceWith", expression) => match evaluate(expression, &current)? {
            Value::Present(Bson::Document(mut replacement)) => {
                // An update cannot change `_id`; a replacement without one keeps it.
                if let Some(id) = current.get("_id") {
                    match replacement.get("_id") {
                        None => {
                            let mut with_id = mongodb::bson::doc! { "_id": id.clone() };
                            with_id.extend(replacement);
                            replacement = with_id;
                        }
                        Some(new) if new != id => return Err(unsupported("a replacement that changes _id")),
                        Some(_) => {}
                    }
                }
                Ok(replacement)
            }
            other => Err(unsupported(format_args!("$replaceWith of {other:?}"))),
        },
        _ => Err(unsupported(format_args!("the stage {stage}"))),
    }
}

fn apply_operators(mut current: Document, operators: &Document) -> Result<Document, Unsupported> {
    for (operator, fields) in operators {
        let Bson::Document(fields) = fields else { return Err(unsupported(format_args!("{operator}: {fields}"))) };
        for (field, value) in fields {
            if field.contains('.') || field.starts_with('$') {
                return Err(unsupported(format_args!("the field path {field}")));
            }
            match operator.as_str() {
                "$set" => {
                    current.insert(field.clone(), value.clone());
                }
                "$inc" => {
                    let sum = add(current.get(field).cloned().unwrap_or(Bson::Int32(0)), value)?;
                    current.insert(field.clone(), sum);
                }
                "$addToSet" => {
                    if matches!(value, Bson::Document(d) if d.keys().any(|k| k.starts_with('$'))) {
                        return Err(unsupported(format_args!("$addToSet of {value}")));
                    }
                    match current.get_mut(field) {
                        None => {
                            current.insert(field.clone(), Bson::Array(vec![value.clone()]));
                        }
                        Some(Bson::Array(items)) => {
                            if !items.contains(value) {
                                items.push(value.clone());
                            }
                        }
                        Some(other) => return Err(unsupported(format_args!("$addToSet onto {other}"))),
                    }
                }
                _ => return Err(unsupported(format_args!("the operator {operator}"))),
            }
        }
    }
    Ok(current)
}

/// `$inc`: the server keeps the wider of the two integer types.
fn add(current: Bson, increment: &Bson) -> Result<Bson, Unsupported> {
    Ok(match (&current, increment) {
        (Bson::Int32(a), Bson::Int32(b)) => {
            a.checked_add(*b).map_or(Bson::Int64(i64::from(*a) + i64::from(*b)), Bson::Int32)
        }
        (Bson::Int32(a), Bson::Int64(b)) => Bson::Int64(i64::from(*a) + b),
        (Bson::Int64(a), Bson::Int32(b)) => Bson::Int64(a + i64::from(*b)),
        (Bson::Int64(a), Bson::Int64(b)) => Bson::Int64(a + b),
        _ => return Err(unsupported(format_args!("$inc of {increment} onto {current}"))),
    })
}

/// The aggregation expressions plans use: field paths, `$$ROOT`,
/// `$literal`, `$cond`, `$lt`, `$ifNull`, `$max`, object and array
/// literals.
fn evaluate(expression: &Bson, root: &Document) -> Result<Value, Unsupported> {
    match expression {
        Bson::String(text) if text == "$$ROOT" => Ok(Value::Present(Bson::Document(root.clone()))),
        Bson::String(text) if text.starts_with("$$") => Err(unsupported(format_args!("the variable {text}"))),
        Bson::String(text) if text.starts_with('$') => {
            let field = &text[1..];
            if field.contains('.') {
                return Err(unsupported(format_args!("the field path {text}")));
            }
            Ok(root.get(field).cloned().map_or(Value::Missing, Value::Present))
        }
        Bson::Document(document) => evaluate_document(document, root),
        Bson::Array(items) => {
            let items = items.iter().map(|item| Ok(evaluate(item, root)?.or_null())).collect::<Result<_, _>>()?;
            Ok(Value::Present(Bson::Array(items)))
        }
        other => Ok(Value::Present(other.clone())),
    }
}

fn evaluate_document(document: &Document, root: &Document) -> Result<Value, Unsupported> {
    let operator = document.keys().next().filter(|k| k.starts_with('$'));
    let Some(operator) = operator else {
        // An object literal: each field evaluated, missing ones left out.
        let mut object = Document::new();
        for (field, expression) in document {
            if let Value::Present(value) = evaluate(expression, root)? {
                object.insert(field.clone(), value);
            }
        }
        return Ok(Value::Present(Bson::Document(object)));
    };
    if document.len() != 1 {
        return Err(unsupported(format_args!("the expression {document}")));
    }
    let argument = &document[operator];
    if operator == "$literal" {
        return Ok(Value::Present(argument.clone()));
    }
    let arguments = match argument {
        Bson::Array(items) => items.iter().map(|item| evaluate(item, root)).collect::<Result<Vec<_>, _>>()?,
        _ => return Err(unsupported(format_args!("the expression {document}"))),
    };
    match (operator.as_str(), arguments.as_slice()) {
        ("$cond", [condition, then, otherwise]) => Ok(if truthy(condition) { then.clone() } else { otherwise.clone() }),
        ("$lt", [a, b]) => Ok(Value::Present(Bson::Boolean(compare(a, b)? == std::cmp::Ordering::Less))),
        ("$ifNull", [value, fallback]) => Ok(if value.is_nullish() { fallback.clone() } else { value.clone() }),
        // `$max` ignores nulls and missing values.
        ("$max", values) => {
            let mut best: Option<Value> = None;
            for value in values.iter().filter(|v| !v.is_nullish()) {
                if best.as_ref().is_none_or(|b| compare(value, b).is_ok_and(|o| o == std::cmp::Ordering::Greater)) {
                    best = Some(value.clone());
                }
            }
            Ok(best.unwrap_or(Value::Present(Bson::Null)))
        }
        _ => Err(unsupported(format_args!("the expression {document}"))),
    }
}

fn truthy(value: &Value) -> bool {
    !matches!(
        value,
        Value::Missing
            | Value::Present(Bson::Null | Bson::Undefined | Bson::Boolean(false) | Bson::Int32(0) | Bson::Int64(0))
    ) && !matches!(value, Value::Present(Bson::Double(d)) if *d == 0.0)
}

/// Numbers compare by value across types; plans compare nothing else.
fn compare(a: &Value, b: &Value) -> Result<std::cmp::Ordering, Unsupported> {
    let number = |v: &Value| match v {
        Value::Present(Bson::Int32(n)) => Some(f64::from(*n)),
        Value::Present(Bson::Int64(n)) => Some(*n as f64),
        Value::Present(Bson::Double(n)) => Some(*n),
        _ => None,
    };
    match (number(a), number(b)) {
        (Some(x), Some(y)) => x.partial_cmp(&y).ok_or_else(|| unsupported("a NaN comparison")),
        _ => Err(unsupported(format_args!("comparing {a:?} with {b:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use mongodb::bson::doc;

    use super::*;

    fn if_newer(version: i64, new: Bson, current: &str) -> Bson {
        Bson::Document(doc! { "$cond": [ { "$lt": [ { "$ifNull": ["$version", 0_i64] }, version ] }, new, current ] })
    }

    #[test]
    fn a_version_guarded_set_applies_only_newer_events() {
        let set = |version: i64, about: &str| {
            doc! { "q": { "_id": "u" }, "u": [ { "$set": {
                "about": if_newer(version, Bson::Document(doc! { "$literal": about }), "$about"),
                "version": { "$max": [ { "$ifNull": ["$version", 0_i64] }, version ] },
            } } ], "upsert": false }
        };
        let start = doc! { "_id": "u", "about": "a", "version": 1_i64 };
        let newer = apply_update(Some(start.clone()), &set(2, "b")).expect("supported").expect("a document");
        assert_eq!(newer, doc! { "_id": "u", "about": "b", "version": 2_i64 });
        let stale = apply_update(Some(newer.clone()), &set(2, "c")).expect("supported").expect("a document");
        assert_eq!(stale, newer, "a repeat changes nothing");
        assert_eq!(apply_update(None, &set(3, "d")).expect("supported"), None, "no upsert, no document");
    }

    #[test]
    fn a_literal_keeps_user_text_that_looks_like_a_field_path() {
        let statement = doc! { "q": { "_id": "u" }, "u": [ { "$set": { "about": { "$literal": "$version" } } } ] };
        let out = apply_update(Some(doc! { "_id": "u", "version": 4_i64 }), &statement)
            .expect("supported")
            .expect("a document");
        assert_eq!(out.get_str("about").expect("about"), "$version");
    }

    #[test]
    fn replace_if_newer_upserts_from_the_query_id_and_keeps_id() {
        let statement = |version: i64, seen: &str| {
            let document = doc! { "_id": "p", "lastSeen": seen, "version": version };
            doc! { "q": { "_id": "p" }, "u": [ { "$replaceWith": if_newer(version, Bson::Document(doc! { "$literal": document }), "$$ROOT") } ], "upsert": true }
        };
        let first = apply_update(None, &statement(2, "b")).expect("supported").expect("a document");
        assert_eq!(first, doc! { "_id": "p", "lastSeen": "b", "version": 2_i64 });
        let older = apply_update(Some(first.clone()), &statement(1, "a")).expect("supported").expect("a document");
        assert_eq!(older, first);
    }

    #[test]
    fn operators_add_to_sets_and_count() {
        let add =
            |other: &str| doc! { "q": { "_id": "r" }, "u": { "$addToSet": { "related": other } }, "upsert": true };
        let mut relations = None;
        for other in ["b", "c", "b"] {
            relations = apply_update(relations, &add(other)).expect("supported");
        }
        assert_eq!(relations.expect("a document"), doc! { "_id": "r", "related": ["b", "c"] });
        let inc =
            |n: i64| doc! { "q": { "_id": "d" }, "u": { "$inc": { "logins": n, "signups": 1_i64 } }, "upsert": true };
        let day = apply_update(apply_update(None, &inc(2)).expect("supported"), &inc(-1))
            .expect("supported")
            .expect("a document");
        assert_eq!(day, doc! { "_id": "d", "logins": 1_i64, "signups": 2_i64 });
    }

    #[test]
    fn if_null_keeps_an_earlier_value_and_missing_fields_stay_missing() {
        let statement = doc! { "q": { "_id": "n" }, "u": [ { "$set": {
            "readAt": { "$ifNull": ["$readAt", Bson::Null] },
            "kind": { "$literal": "message" },
            "gone": "$nothing",
        } } ], "upsert": true };
        let fresh = apply_update(None, &statement).expect("supported").expect("a document");
        assert_eq!(fresh, doc! { "_id": "n", "readAt": Bson::Null, "kind": "message" });
        let read =
            apply_update(Some(doc! { "_id": "n", "readAt": "t" }), &statement).expect("supported").expect("a document");
        assert_eq!(read.get_str("readAt").expect("readAt"), "t");
    }

    #[test]
    fn unknown_shapes_are_refused_not_guessed() {
        for statement in [
            doc! { "q": { "_id": "x" }, "u": { "$push": { "a": 1 } } },
            doc! { "q": { "_id": "x" }, "u": [ { "$unset": "a" } ] },
            doc! { "q": { "_id": "x" }, "u": [ { "$set": { "a": { "$add": [1, 2] } } } ] },
            doc! { "q": { "_id": "x" }, "u": [ { "$set": { "a": "$b.c" } } ] },
            doc! { "q": { "userId": "x" }, "u": { "$set": { "a": 1 } }, "upsert": true },
        ] {
            assert!(
                apply_update(Some(doc! { "_id": "x" }), &statement).is_err() || apply_update(None, &statement).is_err(),
                "{statement}"
            );
        }
    }
}
