//! Validation newtypes: every field of an order is parsed into a type that can
//! only hold a valid value, so the rest of the code never re-checks.
//!
//! Errors name the field (`consignee.mobile`, `items[2].quantity`) and the rule
//! broken, and never echo the value: the value may be personal data. Types that
//! hold personal data print `[redacted]` in `Debug`.

use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

/// A field that failed validation. `field` is a dotted path into the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ValidationError {
    pub field: String,
    pub problem: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

type Result<T> = std::result::Result<T, ValidationError>;

/// Upper bounds, in characters, of free-text fields.
pub const MAX_NAME_CHARS: usize = 64;
pub const MAX_ADDRESS_PART_CHARS: usize = 64;
pub const MAX_STREET_CHARS: usize = 200;
pub const MAX_ITEM_NAME_CHARS: usize = 200;
pub const MAX_ID_CHARS: usize = 64;
pub const MAX_EMAIL_CHARS: usize = 254;
pub const MAX_ITEMS: usize = 200;
pub const MAX_QUANTITY: u32 = 100_000;

/// Trimmed free text: non-empty, at most `max` characters, no control characters.
/// `field` is formatted only for an error: these run for every order read.
fn text(field: impl fmt::Display, raw: &str, max: usize) -> Result<String> {
    let s = raw.trim();
    if s.is_empty() {
        return Err(ValidationError::new(field.to_string(), "must not be empty"));
    }
    if s.chars().count() > max {
        return Err(ValidationError::new(
            field.to_string(),
            format!("must be at most {max} characters"),
        ));
    }
    if s.chars()
        .any(|c| c.is_control() || is_invisible_format_char(c))
    {
        return Err(ValidationError::new(
            field.to_string(),
            "must not contain control or invisible formatting characters",
        ));
    }
    Ok(s.to_owned())
}

/// The name of a field inside another (`consignee.address` and `city`:
/// `consignee.address.city`), formatted only when an error names it.
#[derive(Clone, Copy)]
struct Sub<'a>(&'a str, &'static str);

impl fmt::Display for Sub<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// Bidi overrides and zero-width characters let text display as something it is
/// not; there is no reason for them in names and addresses.
fn is_invisible_format_char(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// An identifier: 1 to 64 of `A-Z a-z 0-9 . _ -`.
fn ident(field: impl fmt::Display, raw: &str) -> Result<String> {
    if raw.is_empty() {
        return Err(ValidationError::new(field.to_string(), "must not be empty"));
    }
    if raw.len() > MAX_ID_CHARS {
        return Err(ValidationError::new(
            field.to_string(),
            format!("must be at most {MAX_ID_CHARS} characters"),
        ));
    }
    if !raw
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(ValidationError::new(
            field.to_string(),
            "may contain only letters, digits, '.', '_' and '-'",
        ));
    }
    Ok(raw.to_owned())
}

macro_rules! public_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn parse(field: impl fmt::Display, raw: &str) -> Result<Self> {
                ident(field, raw).map(Self)
            }
            /// The id as the log holds it, unchecked: decoding takes the
            /// log's text as it is, and [`crate::events::public_event`]
            /// checks it with `parse`.
            pub fn from_log(text: String) -> Self {
                Self(text)
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

public_id!(
    /// The mall's order number (public; kept after erasure for accounting).
    OrderNumber
);
public_id!(
    /// A merchant's id.
    MerchantId
);
public_id!(
    /// A logistics provider's id, for example `sf-express`.
    ProviderId
);
public_id!(
    /// A stock-keeping unit.
    Sku
);

/// Why an order is under legal hold: public text (it is stored in clear in
/// the log, and outlives erasure), so it may not look like personal data.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HoldReason(String);

/// Longest hold reason, in characters.
pub const MAX_HOLD_REASON_CHARS: usize = 200;

impl HoldReason {
    /// A reason as the log holds it. The log is the truth and replay must
    /// not stop: a reason written under other rules (or none) is taken as
    /// it is, and only new holds are checked ([`HoldReason::parse`]).
    pub fn from_log(text: &str) -> Self {
        Self(text.to_owned())
    }

    pub fn parse(field: &str, raw: &str) -> Result<Self> {
        let s = raw.trim();
        let n = s.chars().count();
        if n == 0 || n > MAX_HOLD_REASON_CHARS {
            return Err(ValidationError::new(
                field,
                format!("must have 1 to {MAX_HOLD_REASON_CHARS} characters"),
            ));
        }
        if s.chars().any(char::is_control) {
            return Err(ValidationError::new(
                field,
                "must not contain control characters",
            ));
        }
        if s.contains('@') || looks_like_a_number_of_a_person(s) {
            return Err(ValidationError::new(
                field,
                "must not hold personal data (it is stored in clear in the log): no email \
                 addresses, phone numbers or ID numbers; a case reference is fine",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `s` holds what could be a person's phone or ID number: a run of
/// digits (single spaces or dashes inside it joined, as people write
/// `138 0013 8000`) that is a PRC mobile (11 digits, `1[3-9]...`), a PRC
/// landline with its area code (10 to 12 digits from `0`), an E.164 number
/// (`+` and 8 or more digits) or an ID number (17 digits and more). Dates and
/// case numbers such as `2026-11-30` or `2024-117` pass.
fn looks_like_a_number_of_a_person(s: &str) -> bool {
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let plus = i > 0 && chars[i - 1] == '+';
        let mut digits = String::new();
        while i < chars.len() {
            if chars[i].is_ascii_digit() {
                digits.push(chars[i]);
                i += 1;
            } else if matches!(chars[i], ' ' | '-')
                && chars.get(i + 1).is_some_and(char::is_ascii_digit)
            {
                i += 1;
            } else {
                break;
            }
        }
        let b = digits.as_bytes();
        let mobile = b.len() == 11 && b[0] == b'1' && (b'3'..=b'9').contains(&b[1]);
        let landline = b[0] == b'0' && (10..=12).contains(&b.len());
        let e164 = plus && b.len() >= 8;
        if mobile || landline || e164 || b.len() >= 17 {
            return true;
        }
    }
    false
}

impl fmt::Display for HoldReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! personal_text {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The value as an orderlog node sealed it, opened: not checked
            /// again, as the AES-SIV tag proves a node sealed it, and nodes
            /// seal only parsed values (see [`crate::events::open_event`]).
            pub(crate) fn from_sealed(text: &str) -> Self {
                Self(text.to_owned())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "([redacted])"))
            }
        }
    };
}

personal_text!(
    /// The consignee's name.
    ConsigneeName
);
personal_text!(
    /// A mobile number: a PRC 11-digit mobile (`13800138000`) or E.164 (`+4915112345678`).
    Mobile
);
personal_text!(
    /// A landline: PRC form with area code (`010-12345678`, `0755-1234567-88`) or E.164.
    Landline
);
personal_text!(
    /// An email address, with its domain lower-cased.
    Email
);
personal_text!(
    /// An 18-character PRC resident identity number with a valid check character.
    IdNumber
);

impl ConsigneeName {
    pub fn parse(field: &str, raw: &str) -> Result<Self> {
        text(field, raw, MAX_NAME_CHARS).map(Self)
    }
}

fn is_e164(s: &str) -> bool {
    // '+', a country code that does not start with 0, 8 to 15 digits in all.
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

impl Mobile {
    pub fn parse(field: &str, raw: &str) -> Result<Self> {
        let s = raw.trim();
        let prc = s.len() == 11
            && s.bytes().all(|b| b.is_ascii_digit())
            && s.as_bytes()[0] == b'1'
            && (b'3'..=b'9').contains(&s.as_bytes()[1]);
        if prc || is_e164(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(ValidationError::new(
                field,
                "must be an 11-digit PRC mobile number (1[3-9]xxxxxxxxx) or E.164 (+ and 8 to 15 digits)",
            ))
        }
    }

    /// For display: the first three and last four digits, for example `138****8000`.
    pub fn masked(&self) -> String {
        let chars: Vec<char> = self.0.chars().collect();
        let n = chars.len();
        let head: String = chars[..3.min(n)].iter().collect();
        let tail: String = chars[n.saturating_sub(4).max(3.min(n))..].iter().collect();
        format!(
            "{head}{}{tail}",
            "*".repeat(n.saturating_sub(head.len() + tail.len()))
        )
    }
}

impl Landline {
    pub fn parse(field: &str, raw: &str) -> Result<Self> {
        let s = raw.trim();
        if is_e164(s) || is_prc_landline(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(ValidationError::new(
                field,
                "must be a landline with area code (0xx-xxxxxxxx, optional -extension) or E.164",
            ))
        }
    }
}

/// `0` + 2-3 digit area code, optional `-`, 7-8 digit number, optional `-` and 1-6 digit extension.
fn is_prc_landline(s: &str) -> bool {
    let mut parts = s.split('-');
    let first = parts.next().unwrap_or("");
    let all_digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    let (area, number, ext) = match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => {
            // No separator: area code and number run together (10 to 12 digits).
            if !all_digits(first) || !first.starts_with('0') || !(10..=12).contains(&first.len()) {
                return false;
            }
            return true;
        }
        (Some(n), e, None) => (first, n, e),
        _ => return false,
    };
    all_digits(area)
        && area.starts_with('0')
        && (3..=4).contains(&area.len())
        && all_digits(number)
        && (7..=8).contains(&number.len())
        && ext.is_none_or(|e| all_digits(e) && e.len() <= 6)
}

impl Email {
    pub fn parse(field: &str, raw: &str) -> Result<Self> {
        let s = raw.trim();
        let bad = |why: &str| {
            Err(ValidationError::new(
                field,
                format!("must be an email address: {why}"),
            ))
        };
        if s.len() > MAX_EMAIL_CHARS {
            return bad("at most 254 characters");
        }
        let Some((local, domain)) = s.rsplit_once('@') else {
            return bad("missing '@'");
        };
        if local.is_empty() || local.len() > 64 {
            return bad("the part before '@' must have 1 to 64 characters");
        }
        let local_ok = local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+/=?^_`{|}~.-".contains(&b))
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..");
        if !local_ok {
            return bad("the part before '@' has a character that is not allowed");
        }
        let labels: Vec<&str> = domain.split('.').collect();
        let domain_ok = labels.len() >= 2
            && labels.iter().all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !domain_ok {
            return bad("the domain must be a dotted host name such as example.com");
        }
        Ok(Self(format!("{local}@{}", domain.to_ascii_lowercase())))
    }
}

/// ISO 7064 MOD 11-2 weights for the first 17 digits of a PRC resident ID.
const ID_WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const ID_CHECK: [u8; 11] = *b"10X98765432";

/// The check character of the first 17 digits (which must be ASCII digits).
pub fn id_check_char(first17: &[u8]) -> u8 {
    let sum: u32 = first17
        .iter()
        .zip(ID_WEIGHTS)
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    ID_CHECK[(sum % 11) as usize]
}

impl IdNumber {
    pub fn parse(field: &str, raw: &str) -> Result<Self> {
        let s = raw.trim().to_ascii_uppercase();
        let b = s.as_bytes();
        if b.len() != 18 {
            return Err(ValidationError::new(field, "must have 18 characters"));
        }
        if !b[..17].iter().all(u8::is_ascii_digit) || !(b[17].is_ascii_digit() || b[17] == b'X') {
            return Err(ValidationError::new(
                field,
                "must be 17 digits followed by a digit or 'X'",
            ));
        }
        let num = |r: std::ops::Range<usize>| -> u32 {
            b[r].iter().fold(0, |acc, d| acc * 10 + u32::from(d - b'0'))
        };
        let (year, month, day) = (num(6..10), num(10..12), num(12..14));
        if !(1900..=2100).contains(&year) || !is_calendar_date(year, month, day) {
            return Err(ValidationError::new(
                field,
                "does not contain a real birth date",
            ));
        }
        if id_check_char(&b[..17]) != b[17] {
            return Err(ValidationError::new(
                field,
                "check character does not match (ISO 7064 MOD 11-2)",
            ));
        }
        Ok(Self(s))
    }
}

fn is_calendar_date(year: u32, month: u32, day: u32) -> bool {
    let leap = (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&day)
}

/// A delivery address. All of it is personal data.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize)]
pub struct Address {
    pub province: String,
    pub city: String,
    pub district: String,
    pub street: String,
    pub postal_code: String,
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Address([redacted])")
    }
}

impl Address {
    pub fn parse(
        field: &str,
        province: &str,
        city: &str,
        district: &str,
        street: &str,
        postal_code: &str,
    ) -> Result<Self> {
        let postal = postal_code.trim();
        if postal.len() != 6 || !postal.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ValidationError::new(
                format!("{field}.postal_code"),
                "must be a 6-digit postal code",
            ));
        }
        Ok(Self {
            province: text(Sub(field, "province"), province, MAX_ADDRESS_PART_CHARS)?,
            city: text(Sub(field, "city"), city, MAX_ADDRESS_PART_CHARS)?,
            district: text(Sub(field, "district"), district, MAX_ADDRESS_PART_CHARS)?,
            street: text(Sub(field, "street"), street, MAX_STREET_CHARS)?,
            postal_code: postal.to_owned(),
        })
    }
}

/// An ISO 4217 currency code: three upper-case letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Currency([u8; 3]);

impl Currency {
    pub fn parse(field: &str, raw: &str) -> Result<Self> {
        let b = raw.as_bytes();
        if b.len() == 3 && b.iter().all(u8::is_ascii_uppercase) {
            Ok(Self([b[0], b[1], b[2]]))
        } else {
            Err(ValidationError::new(
                field,
                "must be an ISO 4217 code of three upper-case letters, for example CNY",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ever built from ASCII upper-case letters.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One order line. Public: kept after erasure for accounting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub sku: Sku,
    pub name: String,
    pub quantity: u32,
    /// Price of one unit in the currency's minor unit (fen for CNY).
    pub unit_price: u64,
    /// Real-name-registered goods need the buyer's ID number.
    pub real_name: bool,
}

impl Item {
    pub fn parse(
        field: &str,
        sku: &str,
        name: &str,
        quantity: i64,
        unit_price: i64,
        real_name: bool,
    ) -> Result<Self> {
        if quantity <= 0 || quantity > i64::from(MAX_QUANTITY) {
            return Err(ValidationError::new(
                format!("{field}.quantity"),
                format!("must be between 1 and {MAX_QUANTITY}"),
            ));
        }
        if unit_price < 0 {
            return Err(ValidationError::new(
                format!("{field}.unit_price"),
                "must not be negative (minor units, for example fen)",
            ));
        }
        Ok(Self {
            sku: Sku::parse(Sub(field, "sku"), sku)?,
            name: text(Sub(field, "name"), name, MAX_ITEM_NAME_CHARS)?,
            quantity: quantity as u32,
            unit_price: unit_price as u64,
            real_name,
        })
    }

    /// `quantity * unit_price`, or `None` on overflow.
    pub fn line_total(&self) -> Option<u64> {
        u64::from(self.quantity).checked_mul(self.unit_price)
    }
}

/// An amount in minor units with its currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    pub minor: u64,
    pub currency: Currency,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a valid ID number for a birth date by computing its check character.
    pub(crate) fn id_with_check(first17: &str) -> String {
        let c = id_check_char(first17.as_bytes()) as char;
        format!("{first17}{c}")
    }

    #[test]
    fn id_number_accepts_a_valid_check_character() {
        // A well-known sample from GB 11643-1999.
        assert!(IdNumber::parse("id_number", "11010519491231002X").is_ok());
        assert!(IdNumber::parse("id_number", "11010519491231002x").is_ok());
        assert!(IdNumber::parse("id_number", &id_with_check("44030820000229123")).is_ok());
    }

    #[test]
    fn id_number_rejects_a_wrong_check_character() {
        let err = IdNumber::parse("id_number", "110105194912310021").unwrap_err();
        assert_eq!(err.field, "id_number");
        assert!(err.problem.contains("MOD 11-2"), "{err}");
    }

    #[test]
    fn id_number_rejects_an_impossible_birth_date() {
        // 1999-02-29 does not exist; the check character is right for the digits.
        let err = IdNumber::parse("id_number", &id_with_check("44030819990229123")).unwrap_err();
        assert!(err.problem.contains("birth date"), "{err}");
        let err = IdNumber::parse("id_number", &id_with_check("44030820001301123")).unwrap_err();
        assert!(err.problem.contains("birth date"), "{err}");
    }

    #[test]
    fn id_number_rejects_wrong_length_and_letters() {
        assert!(
            IdNumber::parse("id", "1101051949123100")
                .unwrap_err()
                .problem
                .contains("18")
        );
        assert!(
            IdNumber::parse("id", "1101051949123100AX")
                .unwrap_err()
                .problem
                .contains("17 digits")
        );
    }

    #[test]
    fn errors_never_echo_the_value() {
        let secret = "Zhang\u{0007}San";
        let err = ConsigneeName::parse("consignee.name", secret).unwrap_err();
        assert!(!err.to_string().contains("Zhang"));
        let err = Mobile::parse("consignee.mobile", "12345").unwrap_err();
        assert!(!err.to_string().contains("12345"));
        let err = Email::parse("contact.email", "zhang.san@").unwrap_err();
        assert!(!err.to_string().contains("zhang"));
    }

    #[test]
    fn name_is_trimmed_bounded_and_free_of_control_characters() {
        assert_eq!(
            ConsigneeName::parse("n", "  张三 ").unwrap().as_str(),
            "张三"
        );
        assert!(
            ConsigneeName::parse("n", "   ")
                .unwrap_err()
                .problem
                .contains("empty")
        );
        assert!(
            ConsigneeName::parse("n", &"张".repeat(65))
                .unwrap_err()
                .problem
                .contains("64")
        );
        assert!(ConsigneeName::parse("n", &"张".repeat(64)).is_ok());
        assert!(ConsigneeName::parse("n", "a\nb").is_err());
        assert!(ConsigneeName::parse("n", "abc\u{202E}def").is_err());
    }

    #[test]
    fn mobile_accepts_prc_and_e164_only() {
        for ok in [
            "13800138000",
            "19912345678",
            "+8613800138000",
            "+4915112345678",
        ] {
            assert!(Mobile::parse("m", ok).is_ok(), "{ok}");
        }
        for bad in [
            "12800138000",
            "1380013800",
            "138001380000",
            "+0123456789",
            "+86 138",
            "phone",
        ] {
            assert!(Mobile::parse("m", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mobile_masks_the_middle_digits() {
        assert_eq!(
            Mobile::parse("m", "13800138000").unwrap().masked(),
            "138****8000"
        );
        assert_eq!(
            Mobile::parse("m", "+4915112345678").unwrap().masked(),
            "+49*******5678"
        );
    }

    #[test]
    fn landline_accepts_area_code_forms_and_e164() {
        for ok in [
            "010-12345678",
            "0755-1234567",
            "0755-1234567-88",
            "01012345678",
            "+861012345678",
        ] {
            assert!(Landline::parse("l", ok).is_ok(), "{ok}");
        }
        for bad in [
            "12345678",
            "010-123",
            "0755-1234567-1234567",
            "010--12345678",
            "tel",
        ] {
            assert!(Landline::parse("l", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn email_needs_a_local_part_and_a_dotted_domain() {
        assert_eq!(
            Email::parse("e", "Zhang.San@Example.COM").unwrap().as_str(),
            "Zhang.San@example.com"
        );
        for bad in [
            "no-at.example.com",
            "@example.com",
            "a@localhost",
            "a@-x.com",
            "a..b@x.com",
            "a b@x.com",
        ] {
            assert!(Email::parse("e", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn address_checks_each_part_and_names_it() {
        let ok = Address::parse(
            "consignee.address",
            "广东省",
            "深圳市",
            "南山区",
            "科技园路 1 号",
            "518000",
        );
        assert!(ok.is_ok());
        let err =
            Address::parse("consignee.address", "广东省", "", "南山区", "x", "518000").unwrap_err();
        assert_eq!(err.field, "consignee.address.city");
        let err = Address::parse("consignee.address", "a", "b", "c", "d", "51800").unwrap_err();
        assert_eq!(err.field, "consignee.address.postal_code");
    }

    #[test]
    fn items_need_positive_quantity_and_non_negative_price() {
        assert!(Item::parse("items[0]", "SKU-1", "Drill", 1, 100, false).is_ok());
        assert_eq!(
            Item::parse("items[0]", "SKU-1", "Drill", 0, 100, false)
                .unwrap_err()
                .field,
            "items[0].quantity"
        );
        assert_eq!(
            Item::parse("items[1]", "SKU-1", "Drill", 1, -1, false)
                .unwrap_err()
                .field,
            "items[1].unit_price"
        );
        assert_eq!(
            Item::parse("items[2]", "S K U", "Drill", 1, 1, false)
                .unwrap_err()
                .field,
            "items[2].sku"
        );
    }

    #[test]
    fn currency_is_three_upper_case_letters() {
        assert_eq!(Currency::parse("currency", "CNY").unwrap().as_str(), "CNY");
        assert!(Currency::parse("currency", "cny").is_err());
        assert!(Currency::parse("currency", "YUAN").is_err());
    }

    #[test]
    fn personal_types_print_redacted() {
        let m = Mobile::parse("m", "13800138000").unwrap();
        assert!(!format!("{m:?}").contains("138"));
        let a = Address::parse("a", "p", "c", "d", "s", "518000").unwrap();
        assert!(!format!("{a:?}").contains("518000"));
    }
}
