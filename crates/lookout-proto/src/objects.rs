//! Object events: a detector's change is the set of classes present in a camera changing ("a
//! person appeared, the car left"). The recorder decides and stores it like a label change, as
//! a [`Label`] that names the set: class id [`CLASSES_PRESENT`], the class names sorted and
//! joined by [`SEPARATOR`] (empty when nothing is there), score 1. Whatever shows changes
//! renders one with [`describe`], e.g. `+person -car`.

use std::collections::BTreeSet;

use crate::v1::Label;

/// The class id of a label naming the set of classes present.
pub const CLASSES_PRESENT: u32 = u32::MAX;

/// Between the class names of such a label.
pub const SEPARATOR: &str = ", ";

/// The label naming the set of classes in `names` (each once, sorted).
pub fn present<'a>(names: impl IntoIterator<Item = &'a str>) -> Label {
    let set: BTreeSet<&str> = names.into_iter().filter(|n| !n.is_empty()).collect();
    let name = set.into_iter().collect::<Vec<_>>().join(SEPARATOR);
    Label { class_id: CLASSES_PRESENT, name, score: 1.0 }
}

/// Whether `label` names a set of classes present.
pub fn is_present(label: &Label) -> bool {
    label.class_id == CLASSES_PRESENT
}

fn classes(name: &str) -> BTreeSet<&str> {
    name.split(SEPARATOR).filter(|n| !n.is_empty()).collect()
}

/// An object event in words: the classes that appeared (`+`) and left (`-`) between the set
/// `previous` names (none: nothing was there) and the one `current` names, e.g. `+person -car`;
/// `nothing` when they are the same.
pub fn describe(previous: Option<&str>, current: &str) -> String {
    let (before, now) = (classes(previous.unwrap_or("")), classes(current));
    let appeared = now.difference(&before).map(|c| format!("+{c}"));
    let left = before.difference(&now).map(|c| format!("-{c}"));
    let words: Vec<String> = appeared.chain(left).collect();
    if words.is_empty() { "nothing".to_owned() } else { words.join(" ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_is_named_sorted_once() {
        let l = present(["person", "car", "person", ""]);
        assert_eq!(l.name, "car, person");
        assert!(is_present(&l));
        assert_eq!(present([]).name, "");
        assert!(!is_present(&Label { class_id: 17, name: "cat".into(), score: 0.9 }));
    }

    #[test]
    fn events_say_what_appeared_and_what_left() {
        assert_eq!(describe(Some("car"), "person"), "+person -car");
        assert_eq!(describe(None, "cat, cup"), "+cat +cup");
        assert_eq!(describe(Some("cat, cup"), ""), "-cat -cup");
        assert_eq!(describe(Some("car, person"), "car, dog, person"), "+dog");
        assert_eq!(describe(Some("car"), "car"), "nothing");
    }
}
