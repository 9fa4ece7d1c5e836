//! The statement shapes every aggregate's planning builds on, written once
//! so the idempotency rule is too: a document changes only if the event is
//! newer than its `version`, and user text is never read as an operator.

use mongodb::bson::{Bson, Document, doc};

use super::{Creation, Plan};

pub(super) fn to_bson<T: serde::Serialize>(value: &T) -> Bson {
    mongodb::bson::to_bson(value).unwrap_or(Bson::Null)
}

/// `{$literal: v}`: user text such as "$about" must never be read as a field path.
pub(super) fn literal(value: Bson) -> Bson {
    Bson::Document(doc! { "$literal": value })
}

/// `if version < v then new else current`.
pub(super) fn if_newer(version: u64, new: Bson, current: &str) -> Bson {
    Bson::Document(
        doc! { "$cond": [ { "$lt": [ { "$ifNull": ["$version", 0_i64] }, version as i64 ] }, new, current ] },
    )
}

/// Creates a document, or replaces it if the event is newer (see `Creation`).
pub(super) fn create(plan: &mut Plan, collection: &'static str, id: &str, version: u64, document: Bson) {
    let otherwise = replace_if_newer(id, version, document.clone());
    let document = match document {
        Bson::Document(document) => document,
        _ => return,
    };
    plan.creations.entry(collection).or_default().push(Creation { id: id.to_owned(), document, otherwise });
}

/// Replaces the whole document if the event is newer (upserting).
pub(super) fn replace_if_newer(id: &str, version: u64, document: Bson) -> Document {
    doc! {
        "q": { "_id": id },
        "u": [ { "$replaceWith": if_newer(version, literal(document), "$$ROOT") } ],
        "upsert": true,
    }
}

/// Sets some fields if the event is newer, and raises the version.
pub(super) fn set_if_newer(id: &str, version: u64, fields: Document) -> Document {
    let mut set = Document::new();
    for (name, value) in fields {
        set.insert(name.clone(), if_newer(version, literal(value), &format!("${name}")));
    }
    set.insert("version", doc! { "$max": [ { "$ifNull": ["$version", 0_i64] }, version as i64 ] });
    doc! { "q": { "_id": id }, "u": [ { "$set": set } ], "upsert": false }
}
