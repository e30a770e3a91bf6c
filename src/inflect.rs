//! Name forms: the case conversions every name goes through, English singular/plural for
//! aggregate and table names, and the indefinite article before a name.
//!
//! The inflection rules cover regular nouns and the common irregular endings; a name they
//! get wrong can always be set explicitly in the spec (`aggregate = "..."`).

use heck::{ToKebabCase, ToPascalCase, ToShoutySnakeCase, ToSnakeCase, ToTitleCase};
use serde::Serialize;

/// One name in every case the blueprints need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Names {
    /// As the user wrote it.
    pub raw: String,
    pub snake: String,
    pub kebab: String,
    pub pascal: String,
    pub shouty: String,
    pub title: String,
}

impl Names {
    pub fn new(raw: &str) -> Self {
        Names {
            raw: raw.to_string(),
            snake: raw.to_snake_case(),
            kebab: raw.to_kebab_case(),
            pascal: raw.to_pascal_case(),
            shouty: raw.to_shouty_snake_case(),
            title: raw.to_title_case(),
        }
    }
}

const UNCOUNTABLE: &[&str] = &[
    "billing",
    "shipping",
    "inventory",
    "news",
    "series",
    "species",
    "equipment",
    "information",
    "feedback",
    "data",
    "metadata",
    "media",
    "staff",
    "analytics",
    "payroll",
    "settings",
];

fn split_last_word(word: &str) -> (&str, &str) {
    // The last word of a snake_case name is the one that inflects.
    match word.rfind('_') {
        Some(i) => (&word[..=i], &word[i + 1..]),
        None => ("", word),
    }
}

/// `orders` → `order`, `categories` → `category`, `billing` → `billing`.
pub fn singular(snake: &str) -> String {
    let (head, last) = split_last_word(snake);
    let one = if UNCOUNTABLE.contains(&last) {
        last.to_string()
    } else if let Some(stem) = last.strip_suffix("ies").filter(|s| !s.is_empty()) {
        format!("{stem}y")
    } else if let Some(stem) = ["sses", "shes", "ches", "xes", "zes"]
        .iter()
        .find_map(|suffix| {
            last.strip_suffix(suffix)
                .map(|s| (s, &suffix[..suffix.len() - 2]))
        })
        .map(|(s, keep)| format!("{s}{keep}"))
    {
        stem
    } else if last.ends_with("ss") || last.ends_with("us") || last.ends_with("is") {
        last.to_string()
    } else if let Some(stem) = last.strip_suffix('s').filter(|s| !s.is_empty()) {
        stem.to_string()
    } else {
        last.to_string()
    };
    format!("{head}{one}")
}

/// `order` → `orders`, `category` → `categories`, `address` → `addresses`.
pub fn plural(snake: &str) -> String {
    let (head, last) = split_last_word(snake);
    let many = if UNCOUNTABLE.contains(&last) {
        last.to_string()
    } else if let Some(stem) = last.strip_suffix('y').filter(|s| {
        s.chars()
            .last()
            .is_some_and(|c| !matches!(c, 'a' | 'e' | 'i' | 'o' | 'u'))
    }) {
        format!("{stem}ies")
    } else if ["s", "x", "z", "ch", "sh"]
        .iter()
        .any(|e| last.ends_with(e))
    {
        format!("{last}es")
    } else {
        format!("{last}s")
    };
    format!("{head}{many}")
}

/// Starts of words spelled with a vowel but said with a consonant (`a User`, `a Euro
/// payment`, `a One-time code`), and of words spelled with a consonant but said with a
/// vowel (`an Hour`, `an Honest`).
const VOWEL_LETTER_CONSONANT_SOUND: &[&str] = &[
    "uni", "use", "usu", "uti", "eu", "one", "once", "ure", "uro",
];
const SILENT_H: &[&str] = &["hour", "honest", "honor", "honour", "heir"];

/// The indefinite article before `word` as it is said: `an` before `Order` and `invoice`,
/// `a` before `Payment`, `User` and `Euro`. Acronyms said letter by letter (`SKU`, `API`)
/// are taken as words; a name this gets wrong reads oddly but stays correct code.
pub fn article(word: &str) -> &'static str {
    let lower = word.to_lowercase();
    let starts = |prefixes: &[&str]| prefixes.iter().any(|p| lower.starts_with(p));
    match lower.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') if !starts(VOWEL_LETTER_CONSONANT_SOUND) => "an",
        Some('h') if starts(SILENT_H) => "an",
        _ => "a",
    }
}

/// `Order` → `an Order`, `payment` → `a payment`.
pub fn with_article(word: &str) -> String {
    format!("{} {word}", article(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn singular_handles_regular_and_common_irregular_endings() {
        for (many, one) in [
            ("orders", "order"),
            ("categories", "category"),
            ("addresses", "address"),
            ("boxes", "box"),
            ("batches", "batch"),
            ("billing", "billing"),
            ("status", "status"),
            ("order_items", "order_item"),
            ("shipping", "shipping"),
            ("payment", "payment"),
        ] {
            assert_eq!(singular(many), one, "singular of {many}");
        }
    }

    #[test]
    fn plural_handles_regular_and_common_irregular_endings() {
        for (one, many) in [
            ("order", "orders"),
            ("category", "categories"),
            ("day", "days"),
            ("address", "addresses"),
            ("box", "boxes"),
            ("batch", "batches"),
            ("invoice", "invoices"),
            ("billing", "billing"),
            ("order_item", "order_items"),
        ] {
            assert_eq!(plural(one), many, "plural of {one}");
        }
    }

    #[test]
    fn the_article_follows_the_sound_not_the_letter() {
        for (word, expected) in [
            ("Order", "an Order"),
            ("invoice", "an invoice"),
            ("Item", "an Item"),
            ("Account", "an Account"),
            ("Event", "an Event"),
            ("Payment", "a Payment"),
            ("Shipment", "a Shipment"),
            ("User", "a User"),
            ("UnitPrice", "a UnitPrice"),
            ("EuroTransfer", "a EuroTransfer"),
            ("Hour", "an Hour"),
            ("Holiday", "a Holiday"),
            ("Umbrella", "an Umbrella"),
            ("", "a "),
        ] {
            assert_eq!(with_article(word), expected, "{word}");
        }
    }

    #[test]
    fn names_cover_every_case() {
        let n = Names::new("order-items");
        assert_eq!(
            (
                n.snake.as_str(),
                n.kebab.as_str(),
                n.pascal.as_str(),
                n.shouty.as_str()
            ),
            ("order_items", "order-items", "OrderItems", "ORDER_ITEMS")
        );
    }
}
