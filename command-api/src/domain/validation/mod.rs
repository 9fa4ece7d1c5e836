//! Field rules of docs/domain.md "Users and auth". Each failure names its rule in
//! `code`, so clients can react without parsing messages.

use events::user::{Gender, Profile};
use platform::error_code::ErrorCode;

use super::Rejection;

pub mod patterns;

const NAME_CHARS: std::ops::RangeInclusive<usize> = 2..=50;
const ABOUT_MAX_CHARS: usize = 500;
pub const SKILLS_MAX: usize = 10;
const SKILL_MAX_CHARS: usize = 30;
pub const MIN_AGE: i64 = 18;
pub const MAX_AGE: i64 = 150;
pub const PASSWORD_MIN_CHARS: usize = 8;
/// argon2 hashes any length, but an unbounded password is a cheap way to make
/// the server burn CPU.
pub const PASSWORD_MAX_CHARS: usize = 128;

/// Profile fields as they arrive, before validation.
#[derive(Debug, Default, Clone)]
pub struct ProfileInput {
    pub first_name: String,
    pub last_name: String,
    pub age: Option<i64>,
    pub gender: Option<String>,
    pub about: Option<String>,
    pub skills: Option<Vec<String>>,
    pub photo_url: Option<String>,
}

pub fn email(raw: &str) -> Result<String, Rejection> {
    let normalised = raw.trim().to_lowercase();
    let valid = normalised.len() <= 254
        && email_address::EmailAddress::parse_with_options(
            &normalised,
            email_address::Options::default().without_display_text(),
        )
        .is_ok_and(|parsed| parsed.domain().contains('.'));
    if valid {
        Ok(normalised)
    } else {
        Err(Rejection::invalid(ErrorCode::EmailInvalid, "emailId must be a valid email address"))
    }
}

pub fn password(raw: &str) -> Result<(), Rejection> {
    let chars = raw.chars().count();
    let strong = (PASSWORD_MIN_CHARS..=PASSWORD_MAX_CHARS).contains(&chars)
        && raw.chars().any(|c| c.is_lowercase())
        && raw.chars().any(|c| c.is_uppercase())
        && raw.chars().any(|c| c.is_ascii_digit())
        && raw.chars().any(|c| !c.is_alphanumeric() && !c.is_whitespace());
    if strong {
        Ok(())
    } else {
        Err(Rejection::invalid(
            ErrorCode::PasswordWeak,
            format!(
                "password must be {PASSWORD_MIN_CHARS}-{PASSWORD_MAX_CHARS} characters with an upper-case letter, a lower-case letter, a digit and a symbol"
            ),
        ))
    }
}

/// Characters that change the direction of the text around them: in a
/// name they can make it display as something else, so a name may not
/// hold any.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Characters that show nothing: whitespace, zero-width joiners and
/// spaces, soft hyphens and the like. Joiners are allowed inside a name
/// (Persian and Indic names use them), but do not count as characters.
fn is_invisible(c: char) -> bool {
    c.is_whitespace()
        || matches!(c, '\u{00AD}' | '\u{034F}' | '\u{180E}' | '\u{200B}'..='\u{200D}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}')
}

/// 2-50 characters, at least two of them visible; no control or
/// direction-changing characters.
fn name(field: &'static str, codes: (ErrorCode, ErrorCode), raw: &str) -> Result<String, Rejection> {
    let (length_code, invalid_code) = codes;
    let trimmed = raw.trim();
    if trimmed.chars().any(|c| c.is_control() || is_bidi_control(c)) {
        return Err(Rejection::invalid(
            invalid_code,
            format!("{field} must not contain control or text-direction characters"),
        ));
    }
    let visible = trimmed.chars().filter(|c| !is_invisible(*c)).count();
    if visible >= *NAME_CHARS.start() && NAME_CHARS.contains(&trimmed.chars().count()) {
        Ok(trimmed.to_owned())
    } else {
        Err(Rejection::invalid(length_code, format!("{field} must be 2-50 characters, at least 2 of them visible")))
    }
}

fn age(raw: Option<i64>) -> Result<Option<u8>, Rejection> {
    match raw {
        None => Ok(None),
        Some(a) if a < MIN_AGE => Err(Rejection::invalid(ErrorCode::AgeBelowMinimum, "age must be at least 18")),
        Some(a) if a > MAX_AGE => Err(Rejection::invalid(ErrorCode::AgeInvalid, "age must be a plausible human age")),
        Some(a) => Ok(u8::try_from(a).ok()),
    }
}

/// The genders by name: matched trimmed and whatever the case.
const GENDERS: [(&str, Gender); 3] = [("male", Gender::Male), ("female", Gender::Female), ("other", Gender::Other)];

fn gender(raw: Option<&str>) -> Result<Option<Gender>, Rejection> {
    let Some(raw) = raw else { return Ok(None) };
    let named = raw.trim().to_lowercase();
    match GENDERS.iter().find(|(name, _)| *name == named) {
        Some((_, gender)) => Ok(Some(*gender)),
        None => Err(Rejection::invalid(ErrorCode::GenderInvalid, "gender must be male, female or other")),
    }
}

fn about(raw: Option<&str>) -> Result<Option<String>, Rejection> {
    match raw.map(str::trim) {
        None | Some("") => Ok(None),
        Some(a) if a.chars().count() > ABOUT_MAX_CHARS => {
            Err(Rejection::invalid(ErrorCode::AboutTooLong, "about must be at most 500 characters"))
        }
        Some(a) => Ok(Some(a.to_owned())),
    }
}

fn skills(raw: Option<&[String]>) -> Result<Vec<String>, Rejection> {
    let raw = raw.unwrap_or_default();
    if raw.len() > SKILLS_MAX {
        return Err(Rejection::invalid(ErrorCode::SkillsTooMany, "at most 10 skills"));
    }
    raw.iter()
        .map(|s| {
            let s = s.trim();
            match s.chars().count() {
                0 => Err(Rejection::invalid(ErrorCode::SkillEmpty, "a skill must not be empty")),
                n if n > SKILL_MAX_CHARS => {
                    Err(Rejection::invalid(ErrorCode::SkillTooLong, "each skill must be at most 30 characters"))
                }
                _ => Ok(s.to_owned()),
            }
        })
        .collect()
}

fn photo_url(raw: Option<&str>) -> Result<Option<String>, Rejection> {
    let Some(raw) = raw.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    match url::Url::parse(raw) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() && raw.len() <= 2048 => {
            Ok(Some(raw.to_owned()))
        }
        _ => Err(Rejection::invalid(ErrorCode::PhotoUrlInvalid, "photoUrl must be an http or https URL")),
    }
}

/// Validates every profile field, reporting the first rule broken.
pub fn profile(input: &ProfileInput) -> Result<Profile, Rejection> {
    Ok(Profile {
        first_name: name("firstName", (ErrorCode::FirstNameLength, ErrorCode::FirstNameInvalid), &input.first_name)?,
        last_name: name("lastName", (ErrorCode::LastNameLength, ErrorCode::LastNameInvalid), &input.last_name)?,
        age: age(input.age)?,
        gender: gender(input.gender.as_deref())?,
        about: about(input.about.as_deref())?,
        skills: skills(input.skills.as_deref())?,
        photo_url: photo_url(input.photo_url.as_deref())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn valid_input() -> ProfileInput {
        ProfileInput {
            first_name: "Ada".into(),
            last_name: "Lovelace".into(),
            age: Some(36),
            gender: Some("female".into()),
            about: Some("first programmer".into()),
            skills: Some(vec!["math".into(), "engines".into()]),
            photo_url: Some("https://example.com/ada.png".into()),
        }
    }

    fn code_of(result: Result<impl std::fmt::Debug, Rejection>) -> &'static str {
        match result {
            Err(Rejection::Invalid { code, .. }) => code.as_str(),
            other => panic!("expected a validation rejection, got {other:?}"),
        }
    }

    #[test]
    fn a_complete_valid_profile_passes() {
        let p = profile(&valid_input()).expect("valid");
        assert_eq!(p.gender, Some(Gender::Female));
        assert_eq!(p.skills, vec!["math", "engines"]);
    }

    #[test]
    fn each_rule_has_its_code() {
        let cases: Vec<(ProfileInput, &str)> = vec![
            (ProfileInput { first_name: "A".into(), ..valid_input() }, "first_name_length"),
            (ProfileInput { last_name: "x".repeat(51), ..valid_input() }, "last_name_length"),
            (ProfileInput { age: Some(17), ..valid_input() }, "age_below_minimum"),
            (ProfileInput { age: Some(400), ..valid_input() }, "age_invalid"),
            (ProfileInput { gender: Some("robot".into()), ..valid_input() }, "gender_invalid"),
            (ProfileInput { about: Some("x".repeat(501)), ..valid_input() }, "about_too_long"),
            (ProfileInput { skills: Some(vec!["s".into(); 11]), ..valid_input() }, "skills_too_many"),
            (ProfileInput { skills: Some(vec!["s".repeat(31)]), ..valid_input() }, "skill_too_long"),
            (ProfileInput { skills: Some(vec!["  ".into()]), ..valid_input() }, "skill_empty"),
            (ProfileInput { photo_url: Some("ftp://example.com/a.png".into()), ..valid_input() }, "photo_url_invalid"),
            (ProfileInput { photo_url: Some("not a url".into()), ..valid_input() }, "photo_url_invalid"),
        ];
        for (input, expected) in cases {
            assert_eq!(code_of(profile(&input)), expected, "input: {input:?}");
        }
    }

    #[test]
    fn names_need_two_visible_characters_and_no_direction_tricks() {
        let with = |first: &str| ProfileInput { first_name: first.into(), ..valid_input() };
        for invisible in ["\u{200B}\u{200B}\u{200B}", "\u{200D}\u{FEFF}", "A\u{200B}"] {
            assert_eq!(code_of(profile(&with(invisible))), "first_name_length", "{invisible:?}");
        }
        for tricky in ["\u{202E}nimda", "Ada\u{2066}", "A\u{0007}da"] {
            assert_eq!(code_of(profile(&with(tricky))), "first_name_invalid", "{tricky:?}");
        }
        // A joiner inside a real name is fine (Persian uses ZWNJ).
        assert!(profile(&with("\u{0645}\u{06CC}\u{200C}\u{0631}\u{0648}")).is_ok());
    }

    #[test]
    fn names_count_characters_not_bytes() {
        let input = ProfileInput { first_name: "Zoë".into(), last_name: "李白".into(), ..valid_input() };
        assert!(profile(&input).is_ok());
    }

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(email("  Ada@Example.COM ").expect("valid"), "ada@example.com");
        for bad in ["", "ada", "ada@", "@example.com", "ada@example", "a b@example.com", "Ada <ada@example.com>"] {
            assert_eq!(code_of(email(bad)), "email_invalid", "{bad:?}");
        }
    }

    #[test]
    fn passwords_must_be_strong() {
        assert!(password("Str0ng!pass").is_ok());
        for weak in
            ["Sh0rt!", "alllower1!", "ALLUPPER1!", "NoDigits!!", "NoSymbol12", &format!("Aa1!{}", "x".repeat(200))]
        {
            assert_eq!(code_of(password(weak)), "password_weak", "{weak:?}");
        }
    }
}
