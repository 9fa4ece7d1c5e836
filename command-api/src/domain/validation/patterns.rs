//! The field rules of this module as JSON Schema `pattern`s, built from the
//! very predicates the validation runs (`char::is_whitespace`,
//! `is_invisible`, `is_bidi_control`, ...), so the published contract and
//! the enforced one cannot drift apart: a client generated from the OpenAPI
//! document knows what the server accepts, down to Unicode case and
//! invisible characters.
//!
//! The dialect is the common subset of ECMA-262 (what JSON Schema names)
//! and Python's `re` (what schemathesis checks with): `\uXXXX` escapes for
//! the Basic Multilingual Plane, literal characters above it, lookaheads,
//! and no `\p{..}` classes.

use std::fmt::Write as _;
use std::sync::OnceLock;

use super::{ABOUT_MAX_CHARS, GENDERS, NAME_CHARS, PASSWORD_MIN_CHARS, SKILL_MAX_CHARS, is_bidi_control, is_invisible};

/// The characters `keep` accepts, as the inside of a character class:
/// maximal runs of code points, each a single character or `a-b`.
fn members(keep: impl Fn(char) -> bool) -> String {
    let mut out = String::new();
    let mut run: Option<(char, char)> = None;
    let flush = |out: &mut String, (first, last): (char, char)| {
        push_escaped(out, first);
        if last != first {
            out.push('-');
            push_escaped(out, last);
        }
    };
    for c in ('\0'..=char::MAX).filter(|c| keep(*c)) {
        run = match run {
            Some((first, last)) if u32::from(last) + 1 == u32::from(c) => Some((first, c)),
            Some(done) => {
                flush(&mut out, done);
                Some((c, c))
            }
            None => Some((c, c)),
        };
    }
    if let Some(done) = run {
        flush(&mut out, done);
    }
    out
}

fn push_escaped(out: &mut String, c: char) {
    if c.is_ascii_alphanumeric() {
        out.push(c);
    } else if u32::from(c) <= 0xFFFF {
        let _ = write!(out, "\\u{:04X}", u32::from(c));
    } else {
        // No `\u{..}` in Python's `re`, no `\U` in ECMA-262: the character itself.
        out.push(c);
    }
}

fn any_of(keep: impl Fn(char) -> bool) -> String {
    format!("[{}]", members(keep))
}

fn none_of(keep: impl Fn(char) -> bool) -> String {
    format!("[^{}]", members(keep))
}

/// A text that is trimmed first (leading and trailing `char::is_whitespace`
/// dropped), then must be `max` characters at most, made of `inner`
/// characters, and not empty unless `optional`.
fn trimmed(inner: &str, edge: &str, max: usize, optional: bool) -> String {
    let space = any_of(char::is_whitespace);
    let body = format!("{edge}(?:{inner}{{0,{}}}{edge})?", max.saturating_sub(2));
    let body = if optional { format!("(?:{body})?") } else { body };
    format!("^{space}*{body}{space}*$")
}

/// `firstName` and `lastName` (`validation::name`): trimmed, 2-50
/// characters, at least two visible, no control or direction-changing
/// character.
pub fn name() -> &'static str {
    static PATTERN: OnceLock<String> = OnceLock::new();
    PATTERN.get_or_init(|| {
        let barred = |c: char| c.is_control() || is_bidi_control(c);
        let space = any_of(char::is_whitespace);
        let allowed = none_of(barred);
        let edge = none_of(|c| c.is_whitespace() || barred(c));
        // Counted from the first character kept by trimming, over characters
        // a name may hold (any other fails the name anyway). Placed there,
        // and free of controls, the text a generator writes for it is also
        // the start of a valid name.
        let hidden = any_of(|c| is_invisible(c) && !barred(c));
        let shown = none_of(|c| is_invisible(c) || barred(c));
        let (min, max) = (*NAME_CHARS.start(), *NAME_CHARS.end());
        format!("^{space}*(?=(?:{hidden}*{shown}){{{min}}}){edge}(?:{allowed}{{0,{}}}{edge})?{space}*$", max - 2)
    })
}

/// `password` (`validation::password`; its length is `minLength` and
/// `maxLength`): a lower-case and an upper-case letter in Unicode's sense,
/// an ASCII digit, and a symbol (neither alphanumeric nor whitespace).
pub fn password() -> &'static str {
    static PATTERN: OnceLock<String> = OnceLock::new();
    PATTERN.get_or_init(|| {
        let needs = [
            any_of(char::is_lowercase),
            any_of(char::is_uppercase),
            "[0-9]".to_owned(),
            none_of(|c| c.is_alphanumeric() || c.is_whitespace()),
        ];
        let lookaheads: String = needs.iter().map(|class| format!("(?=[\\s\\S]*{class})")).collect();
        // Zero-width, so the pattern means "all four present" and the
        // length is minLength's; the tail only helps generators (which
        // write each lookahead's text, then the tail) reach minLength.
        format!("^{lookaheads}[\\s\\S]{{{},}}", PASSWORD_MIN_CHARS - needs.len())
    })
}

/// `gender`: one of the names, trimmed, in any case (`to_lowercase`, so
/// each letter is every character that lower-cases to it).
pub fn gender() -> &'static str {
    static PATTERN: OnceLock<String> = OnceLock::new();
    PATTERN.get_or_init(|| {
        let space = any_of(char::is_whitespace);
        let word = |name: &str| -> String {
            name.chars().map(|letter| any_of(|c| c.to_lowercase().eq(std::iter::once(letter)))).collect()
        };
        let names: Vec<String> = GENDERS.iter().map(|(name, _)| word(name)).collect();
        format!("^{space}*(?:{}){space}*$", names.join("|"))
    })
}

/// `photoUrl`: an http or https URL (blank is none). The URL rules are the
/// `url` crate's (WHATWG), which no pattern can state exactly, so this is
/// the part of them a client needs: a host of dotted labels (no IDNA
/// `xn--` labels, a letter last, so it is never read as an IPv4 number),
/// an optional port up to 9999, then any visible ASCII. Every text it
/// matches is accepted (tested); the odd URL beyond it still is.
pub fn photo_url() -> &'static str {
    static PATTERN: OnceLock<String> = OnceLock::new();
    PATTERN.get_or_init(|| {
        let space = any_of(char::is_whitespace);
        let label = "(?![xX][nN]--)[a-zA-Z0-9-]{1,63}";
        let host = format!("(?:{label}\\.){{0,8}}(?![xX][nN]--)[a-zA-Z][a-zA-Z0-9-]{{0,62}}");
        let url = format!("[hH][tT][tT][pP][sS]?://{host}(?::[0-9]{{1,4}})?(?:[/?#][!-~]{{0,1500}})?");
        format!("^{space}*(?:{url})?{space}*$")
    })
}

/// `about`: at most 500 characters once trimmed; blank is no about.
pub fn about() -> &'static str {
    static PATTERN: OnceLock<String> = OnceLock::new();
    PATTERN.get_or_init(|| trimmed("[\\s\\S]", &none_of(char::is_whitespace), ABOUT_MAX_CHARS, true))
}

/// One skill: 1-30 characters once trimmed.
pub fn skill() -> &'static str {
    static PATTERN: OnceLock<String> = OnceLock::new();
    PATTERN.get_or_init(|| trimmed("[\\s\\S]", &none_of(char::is_whitespace), SKILL_MAX_CHARS, false))
}

#[cfg(test)]
mod tests {
    //! The patterns against the validation functions themselves, on edge
    //! cases and on a spread of characters from every plane.
    use super::super::{ProfileInput, password as check_password, profile};
    use super::*;

    /// ECMA-262 and Python both read these patterns as fancy-regex does:
    /// lookaheads, classes, and a `$` only ever after trailing whitespace,
    /// where Python's "before a final newline" changes nothing.
    fn compiled(pattern: &str) -> impl Fn(&str) -> bool {
        let regex = fancy_regex::Regex::new(pattern).expect("a valid pattern");
        move |text| regex.is_match(text).expect("within the backtrack limit")
    }

    /// Whether the validator accepts a profile that is valid but for what
    /// `edit` sets.
    fn valid_with(edit: impl FnOnce(&mut ProfileInput)) -> bool {
        let mut input = super::super::tests::valid_input();
        edit(&mut input);
        profile(&input).is_ok()
    }

    fn name_valid(text: &str) -> bool {
        valid_with(|input| input.first_name = text.into())
    }

    /// Characters from the interesting corners: controls, spaces, joiners,
    /// direction marks, letters of several scripts, astral symbols.
    fn sample_chars() -> Vec<char> {
        let mut chars: Vec<char> = "aZ0 \t\n\r!é€ßİǅΣσ李\u{00A0}\u{0085}\u{1680}\u{2028}\u{3000}\u{00AD}\u{034F}\u{061C}\u{180E}\u{200B}\u{200C}\u{200D}\u{200E}\u{202A}\u{202E}\u{2060}\u{2066}\u{2069}\u{FEFF}\u{0000}\u{001F}\u{007F}\u{009F}\u{1D400}\u{1F600}\u{10FFFF}"
            .chars()
            .collect();
        chars.extend((0..0x11_0000_u32).step_by(4099).filter_map(char::from_u32));
        chars
    }

    /// Every string of up to three sample characters, padded in the ways
    /// trimming and length care about.
    fn sample_texts() -> Vec<String> {
        let chars = sample_chars();
        let mut texts = Vec::new();
        for a in &chars {
            texts.push(a.to_string());
            // Strong but for one class, unless `a` supplies it.
            for without in ["xY9?zzzz", "XY9?ZZZZ", "xy9?zzzz", "xY9zzzzz", "xY?zzzzz", "xY0?zzzz"] {
                texts.push(format!("{}{a}{}", &without[..2], &without[2..]));
            }
            for b in chars.iter().step_by(3) {
                texts.push(format!("{a}{b}"));
                texts.push(format!(" {a}x{b} "));
                texts.push(format!("{a}{b}Ab1!"));
            }
        }
        for n in [1, 2, 3, 7, 8, 9, 29, 30, 31, 48, 49, 50, 51, 127, 128, 129, 499, 500, 501] {
            texts.push("x".repeat(n));
            texts.push(format!(" {} \n", "x".repeat(n)));
            texts.push(format!("Aa1!{}", "\u{00E9}".repeat(n)));
        }
        texts
    }

    #[test]
    fn the_name_pattern_accepts_exactly_the_valid_names() {
        let matches = compiled(name());
        for text in sample_texts() {
            assert_eq!(matches(&text), name_valid(&text), "{text:?}");
        }
    }

    #[test]
    fn the_password_pattern_with_its_lengths_accepts_exactly_the_strong_passwords() {
        let matches = compiled(password());
        for text in sample_texts() {
            let length = (PASSWORD_MIN_CHARS..=super::super::PASSWORD_MAX_CHARS).contains(&text.chars().count());
            assert_eq!(length && matches(&text), check_password(&text).is_ok(), "{text:?}");
        }
    }

    #[test]
    fn the_gender_pattern_accepts_exactly_the_genders() {
        let matches = compiled(gender());
        let mut texts = sample_texts();
        texts.extend(
            ["male", " Female\n", "OTHER", "fe male", "males", "\u{212A}male", "MALE\u{0130}"].map(String::from),
        );
        for text in texts {
            let valid = valid_with(|input| input.gender = Some(text.clone()));
            assert_eq!(matches(&text), valid, "{text:?}");
        }
    }

    #[test]
    fn every_photo_url_the_pattern_allows_is_accepted() {
        let matches = compiled(photo_url());
        let urls = [
            "https://example.com/ada.png",
            " HTTP://cdn-1.example.org:8080/a/b?c=d#e ",
            "http://localhost",
            "https://a.b.c.d.e.f.g.h.io/%zz/[x]\\y",
            "",
            "  ",
        ];
        for url in urls {
            assert!(matches(url), "{url:?} should match");
        }
        let mut texts = sample_texts();
        texts.extend(
            ["http://999", "http://1.2.3.4", "http://xn--a.com", "http://a.xn--b", "ftp://a.b", "http://a.b:99999"]
                .map(String::from),
        );
        texts.extend(urls.map(String::from));
        for text in &texts {
            let accepted = valid_with(|input| input.photo_url = Some(text.clone()));
            assert!(!matches(text) || accepted, "{text:?} matches but is refused");
        }
    }

    #[test]
    fn the_about_and_skill_patterns_follow_trimming() {
        let (about_matches, skill_matches) = (compiled(about()), compiled(skill()));
        for text in sample_texts() {
            let about_valid = valid_with(|input| input.about = Some(text.clone()));
            assert_eq!(about_matches(&text), about_valid, "about {text:?}");
            let skill_valid = valid_with(|input| input.skills = Some(vec![text.clone()]));
            assert_eq!(skill_matches(&text), skill_valid, "skill {text:?}");
        }
    }
}
