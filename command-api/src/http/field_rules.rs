//! The profile and password rules in the OpenAPI document, written there
//! from `domain::validation` (its constants and its patterns), so the
//! document says exactly what the handlers enforce and cannot drift from it.

use utoipa::openapi::schema::{ArrayItems, Schema};
use utoipa::openapi::{OpenApi, RefOr};

use crate::domain::validation::{self, patterns};

/// What one field must satisfy.
enum Rule {
    /// A string matching `pattern`; lengths only where the rule counts the
    /// raw text (trimmed texts say their length in the pattern).
    Text {
        pattern: &'static str,
        lengths: Option<(usize, usize)>,
    },
    Integer {
        minimum: i64,
        maximum: i64,
    },
    /// An array of at most `max_items` strings matching `item_pattern`.
    Texts {
        max_items: usize,
        item_pattern: &'static str,
    },
}

fn profile_rules() -> Vec<(&'static str, Rule)> {
    vec![
        ("firstName", Rule::Text { pattern: patterns::name(), lengths: None }),
        ("lastName", Rule::Text { pattern: patterns::name(), lengths: None }),
        ("gender", Rule::Text { pattern: patterns::gender(), lengths: None }),
        ("age", Rule::Integer { minimum: validation::MIN_AGE, maximum: validation::MAX_AGE }),
        ("photoUrl", Rule::Text { pattern: patterns::photo_url(), lengths: None }),
        ("about", Rule::Text { pattern: patterns::about(), lengths: None }),
        ("skills", Rule::Texts { max_items: validation::SKILLS_MAX, item_pattern: patterns::skill() }),
    ]
}

fn password_rule() -> Rule {
    Rule::Text {
        pattern: patterns::password(),
        lengths: Some((validation::PASSWORD_MIN_CHARS, validation::PASSWORD_MAX_CHARS)),
    }
}

/// Writes the rules into the request schemas that carry these fields.
#[derive(Debug)]
pub struct FieldRules;

impl utoipa::Modify for FieldRules {
    fn modify(&self, openapi: &mut OpenApi) {
        let Some(components) = openapi.components.as_mut() else { return };
        let mut targets: Vec<(&str, &str, Rule)> = Vec::new();
        for schema in ["SignupRequest", "ProfilePatchRequest"] {
            targets.extend(profile_rules().into_iter().map(|(field, rule)| (schema, field, rule)));
        }
        targets.push(("SignupRequest", "password", password_rule()));
        targets.push(("PasswordChangeRequest", "newPassword", password_rule()));
        // A patch changes at least one field (else 400 `empty_update`), and
        // names only fields it may change (unknown ones are refused, so a
        // misspelt field is an error, not a silent no-op).
        if let Some(RefOr::T(Schema::Object(patch))) = components.schemas.get_mut("ProfilePatchRequest") {
            patch.min_properties = Some(1);
        }
        for (schema, field, rule) in targets {
            let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(schema) else {
                panic!("the OpenAPI document has no object schema {schema}");
            };
            let Some(property) = object.properties.get_mut(field) else {
                panic!("{schema} has no field {field}");
            };
            assert!(apply(property, &rule), "{schema}.{field} is not shaped like its rule");
        }
    }
}

/// Applies `rule` to the schema (or the non-null variant of a nullable
/// one); false when nothing in it fits the rule.
fn apply(schema: &mut RefOr<Schema>, rule: &Rule) -> bool {
    match (schema, rule) {
        (RefOr::T(Schema::Object(object)), Rule::Text { pattern, lengths }) => {
            // The pattern says it all (a `format` would claim more or less).
            object.format = None;
            object.pattern = Some((*pattern).to_owned());
            object.min_length = lengths.map(|(min, _)| min);
            object.max_length = lengths.map(|(_, max)| max);
            true
        }
        (RefOr::T(Schema::Object(object)), Rule::Integer { minimum, maximum }) => {
            object.minimum = Some((*minimum).into());
            object.maximum = Some((*maximum).into());
            true
        }
        (RefOr::T(Schema::Array(array)), Rule::Texts { max_items, item_pattern }) => {
            array.max_items = Some(*max_items);
            match &mut array.items {
                ArrayItems::RefOrSchema(item) => apply(item, &Rule::Text { pattern: item_pattern, lengths: None }),
                ArrayItems::False => false,
            }
        }
        _ => false,
    }
}
