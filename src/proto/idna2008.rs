//! The code-point rules of IDNA2008 (RFC 5892) that UTS 46 processing does not apply.
//!
//! The `idna` crate implements UTS 46, which maps and validates domain names (NFC, case,
//! hyphens, the bidi rule of RFC 5893, the joiner rules of RFC 5892 A.1-A.2), but accepts
//! characters IDNA2008 disallows — symbols and punctuation such as U+2665 (its "NV8" status) —
//! and does not check the CONTEXTO rules. `label_valid` adds exactly those: a code point is
//! valid when RFC 5892's derivation makes it PVALID, or CONTEXTJ (left to UTS 46), or
//! CONTEXTO with its rule of RFC 5892 Appendix A met. Character data comes from ICU4X
//! (`icu_properties`, which the `idna` crate already uses).

use icu_properties::props::{
    DefaultIgnorableCodePoint, GeneralCategory, HangulSyllableType, NoncharacterCodePoint, Script,
    WhiteSpace,
};
use icu_properties::{CodePointMapData, CodePointSetData};

/// RFC 5892 2.6 exceptions that are PVALID although their category is not LetterDigits.
const EXCEPTION_PVALID: [char; 6] = [
    '\u{00df}', '\u{03c2}', '\u{06fd}', '\u{06fe}', '\u{0f0b}', '\u{3007}',
];
/// RFC 5892 2.6 exceptions that are DISALLOWED although their category is LetterDigits.
const EXCEPTION_DISALLOWED: [char; 10] = [
    '\u{0640}', '\u{07fa}', '\u{302e}', '\u{302f}', '\u{3031}', '\u{3032}', '\u{3033}', '\u{3034}',
    '\u{3035}', '\u{303b}',
];
/// ZERO WIDTH NON-JOINER and JOINER (CONTEXTJ; UTS 46 CheckJoiners applies their rules).
const JOINERS: [char; 2] = ['\u{200c}', '\u{200d}'];

/// How RFC 5892 classifies one non-ASCII code point (before any context rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Pvalid,
    ContextJ,
    ContextO,
    Disallowed,
}

/// True for the CONTEXTO code points of RFC 5892 Appendix A.3-A.9.
fn is_context_o(c: char) -> bool {
    matches!(
        c,
        '\u{00b7}' | '\u{0375}' | '\u{05f3}' | '\u{05f4}' | '\u{30fb}'
    ) || ('\u{0660}'..='\u{0669}').contains(&c)
        || ('\u{06f0}'..='\u{06f9}').contains(&c)
}

/// RFC 5892 section 3's derivation for a non-ASCII code point.
fn class(c: char) -> Class {
    if is_context_o(c) {
        return Class::ContextO;
    }
    if EXCEPTION_PVALID.contains(&c) {
        return Class::Pvalid;
    }
    if EXCEPTION_DISALLOWED.contains(&c) {
        return Class::Disallowed;
    }
    if JOINERS.contains(&c) {
        return Class::ContextJ;
    }
    // Unstable code points (NFKC_Casefold changes them) are left to UTS 46, which maps them,
    // so the label is not the same after processing and is refused by the caller.
    let ignorable = CodePointSetData::new::<DefaultIgnorableCodePoint>().contains(c)
        || CodePointSetData::new::<WhiteSpace>().contains(c)
        || CodePointSetData::new::<NoncharacterCodePoint>().contains(c);
    // IgnorableBlocks: Combining Diacritical Marks for Symbols, Musical Symbols, Ancient
    // Greek Musical Notation.
    let ignorable_block =
        ('\u{20d0}'..='\u{20ff}').contains(&c) || ('\u{1d100}'..='\u{1d24f}').contains(&c);
    let old_jamo = matches!(
        CodePointMapData::<HangulSyllableType>::new().get(c),
        HangulSyllableType::LeadingJamo
            | HangulSyllableType::VowelJamo
            | HangulSyllableType::TrailingJamo
    );
    if ignorable || ignorable_block || old_jamo {
        return Class::Disallowed;
    }
    match CodePointMapData::<GeneralCategory>::new().get(c) {
        GeneralCategory::LowercaseLetter
        | GeneralCategory::UppercaseLetter
        | GeneralCategory::OtherLetter
        | GeneralCategory::DecimalNumber
        | GeneralCategory::ModifierLetter
        | GeneralCategory::NonspacingMark
        | GeneralCategory::SpacingMark => Class::Pvalid,
        _ => Class::Disallowed,
    }
}

/// The script of `c`.
fn script(c: char) -> Script {
    CodePointMapData::<Script>::new().get(c)
}

/// True when CONTEXTO code point `label[i]` meets its rule (RFC 5892 Appendix A.3-A.9).
fn context_o_ok(label: &[char], i: usize) -> bool {
    let before = i.checked_sub(1).map(|j| label[j]);
    let after = label.get(i + 1).copied();
    match label[i] {
        // MIDDLE DOT: between two 'l' (Catalan "l·l").
        '\u{00b7}' => before == Some('l') && after == Some('l'),
        // GREEK LOWER NUMERAL SIGN (KERAIA): followed by Greek.
        '\u{0375}' => after.is_some_and(|c| script(c) == Script::Greek),
        // HEBREW PUNCTUATION GERESH and GERSHAYIM: preceded by Hebrew.
        '\u{05f3}' | '\u{05f4}' => before.is_some_and(|c| script(c) == Script::Hebrew),
        // KATAKANA MIDDLE DOT: the label holds Hiragana, Katakana or Han.
        '\u{30fb}' => label.iter().any(|&c| {
            c != '\u{30fb}'
                && matches!(script(c), Script::Hiragana | Script::Katakana | Script::Han)
        }),
        // ARABIC-INDIC DIGITS: no EXTENDED ARABIC-INDIC DIGIT in the label, and vice versa.
        c if ('\u{0660}'..='\u{0669}').contains(&c) => {
            !label.iter().any(|d| ('\u{06f0}'..='\u{06f9}').contains(d))
        }
        c if ('\u{06f0}'..='\u{06f9}').contains(&c) => {
            !label.iter().any(|d| ('\u{0660}'..='\u{0669}').contains(d))
        }
        _ => false,
    }
}

/// True when every code point of `label` (one U-label, already known to pass UTS 46
/// unchanged) is allowed by IDNA2008 where it stands. At most 63 characters are inspected
/// (no longer label can be valid; the caller's DNS length check refuses it anyway).
pub fn label_valid(label: &str) -> bool {
    let mut chars = ['\0'; 63];
    let mut len = 0;
    for c in label.chars() {
        if len == chars.len() {
            return false;
        }
        chars[len] = c;
        len += 1;
    }
    let chars = &chars[..len];
    chars.iter().enumerate().all(|(i, &c)| {
        if c.is_ascii() {
            return c.is_ascii_alphanumeric() || c == '-';
        }
        match class(c) {
            Class::Pvalid | Class::ContextJ => true,
            Class::ContextO => context_o_ok(chars, i),
            Class::Disallowed => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_digits_and_marks_are_valid_symbols_and_punctuation_are_not() {
        for good in [
            "bücher",
            "例え",
            "テスト",
            "παράδειγμα",
            "пример",
            "ß",
            "ς",
            "〇",
        ] {
            assert!(label_valid(good), "{good:?}");
        }
        for bad in [
            "\u{2665}",         // BLACK HEART SUIT (So)
            "a\u{2603}",        // SNOWMAN (So)
            "\u{00a9}x",        // COPYRIGHT SIGN (So)
            "x\u{00bf}",        // INVERTED QUESTION MARK (Po)
            "\u{2160}",         // ROMAN NUMERAL ONE (Nl)
            "\u{00bd}",         // VULGAR FRACTION ONE HALF (No)
            "\u{0640}\u{0628}", // ARABIC TATWEEL (exception: DISALLOWED)
            "\u{3164}",         // HANGUL FILLER (default ignorable)
            "\u{1100}",         // HANGUL CHOSEONG KIYEOK (old jamo)
            "\u{e000}",         // private use
            "\u{20d0}",         // combining mark for symbols
        ] {
            assert!(!label_valid(bad), "{bad:?}");
        }
    }

    #[test]
    fn context_o_rules() {
        assert!(label_valid("col\u{00b7}legi"));
        assert!(!label_valid("co\u{00b7}legi"));
        assert!(!label_valid("\u{00b7}l"));
        assert!(label_valid("\u{0375}\u{03b1}"));
        assert!(!label_valid("\u{0375}a\u{03b1}"));
        assert!(label_valid("\u{05d0}\u{05f3}"));
        assert!(!label_valid("\u{05f3}\u{05d0}"));
        assert!(label_valid("\u{30a2}\u{30fb}\u{30a4}"));
        assert!(!label_valid("\u{30fb}\u{00e9}"));
        assert!(label_valid("\u{0628}\u{0661}\u{0662}"));
        assert!(!label_valid("\u{0628}\u{0661}\u{06f2}"));
        assert!(label_valid("\u{0628}\u{06f1}\u{06f2}"));
    }

    #[test]
    fn over_63_characters_is_never_valid() {
        assert!(label_valid(&"é".repeat(63)));
        assert!(!label_valid(&"é".repeat(64)));
    }
}
