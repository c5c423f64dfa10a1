//! Which of a namespace's subscriptions an event type may reach, found without matching every
//! subscription's patterns: an event is routed on the request path, and a platform with one
//! subscription per customer endpoint has thousands in a namespace.
//!
//! Patterns are filed by what an event type must contain to match them: the whole type (no
//! wildcard), or its first dot-separated segment (`invoice.*`, `invoice.*.failed`). Patterns
//! that start with a wildcard, or whose literal start ends inside the first segment
//! (`inv*`), are looked at for every event. The routes give candidates; each candidate's own
//! patterns still decide.

use std::collections::HashMap;

/// A wildmatch pattern's wildcards.
const WILDCARDS: [char; 2] = ['*', '?'];

#[derive(Debug, Default)]
pub(super) struct Routes {
    /// Patterns without wildcards, by the event type they name.
    exact: HashMap<String, Vec<usize>>,
    /// Patterns that begin with a whole literal segment and a dot, by that segment.
    by_first_segment: HashMap<String, Vec<usize>>,
    /// Every other pattern's owner.
    everywhere: Vec<usize>,
}

impl Routes {
    /// Files `patterns`, each with the index of the subscription it belongs to, in ascending
    /// order of that index.
    pub(super) fn new<'a>(patterns: impl IntoIterator<Item = (usize, &'a str)>) -> Self {
        let mut routes = Self::default();
        for (owner, pattern) in patterns {
            let list = match pattern.find(WILDCARDS) {
                None => routes.exact.entry(pattern.to_owned()).or_default(),
                Some(wildcard) => match pattern[..wildcard].split_once('.') {
                    Some((segment, _)) => routes.by_first_segment.entry(segment.to_owned()).or_default(),
                    None => &mut routes.everywhere,
                },
            };
            // An owner with two patterns filed together is listed once. Owners come in
            // ascending order, so each list is ascending, as `candidates` merges them.
            debug_assert!(list.last().is_none_or(|&last| last <= owner), "owners in order");
            if list.last() != Some(&owner) {
                list.push(owner);
            }
        }
        routes
    }

    /// The subscriptions whose patterns may match `event_type`, each once, in their order.
    /// Every subscription with a matching pattern is among them.
    pub(super) fn candidates(&self, event_type: &str) -> impl Iterator<Item = usize> + '_ {
        let first_segment = event_type.split_once('.').map(|(segment, _)| segment);
        // Each list is in ascending order (filed in owner order): merged, with no allocation
        // on the path of every event.
        Merged {
            lists: [
                self.exact.get(event_type).map_or(&[][..], Vec::as_slice),
                first_segment
                    .and_then(|s| self.by_first_segment.get(s))
                    .map_or(&[][..], Vec::as_slice),
                &self.everywhere,
            ],
        }
    }
}

/// Ascending lists merged into one ascending sequence, each value once.
struct Merged<'a> {
    lists: [&'a [usize]; 3],
}

impl Iterator for Merged<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let least = self.lists.iter().filter_map(|list| list.first()).min().copied()?;
        for list in &mut self.lists {
            if list.first() == Some(&least) {
                *list = &list[1..];
            }
        }
        Some(least)
    }
}

#[cfg(test)]
mod tests {
    use wildmatch::WildMatch;

    use super::*;

    const PATTERNS: [&str; 12] = [
        "invoice.paid",
        "invoice.*",
        "invoice.*.failed",
        "inv*",
        "*",
        "*.created",
        "invoice?paid",
        "customer.created",
        "push",
        "pu?h",
        "a.b.c",
        "",
    ];

    #[test]
    fn candidates_are_every_subscription_a_pattern_of_matches() {
        // Subscription i has pattern i, and the last one two patterns.
        let owners: Vec<(usize, &str)> = PATTERNS
            .iter()
            .enumerate()
            .map(|(i, p)| (i, *p))
            .chain([(PATTERNS.len(), "order.created"), (PATTERNS.len(), "order.*")])
            .collect();
        let routes = Routes::new(owners.iter().copied());
        let events = [
            "invoice.paid",
            "invoice.payment.failed",
            "invoice",
            "invoiceXpaid",
            "customer.created",
            "order.created",
            "push",
            "puuh",
            "a.b.c",
            "",
            ".",
            "x.",
        ];
        for event in events {
            let matching: Vec<usize> = owners
                .iter()
                .filter(|(_, p)| WildMatch::new(p).matches(event))
                .map(|(i, _)| *i)
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let candidates: Vec<usize> = routes.candidates(event).collect();
            for owner in &matching {
                assert!(
                    candidates.contains(owner),
                    "{event:?}: {owner} matches and is no candidate"
                );
            }
            assert!(candidates.is_sorted(), "{event:?}: in order");
            assert!(
                candidates.windows(2).all(|w| w[0] != w[1]),
                "{event:?}: each once"
            );
        }
    }

    #[test]
    fn a_type_named_in_full_or_by_its_first_segment_skips_the_others() {
        let routes = Routes::new([
            (0, "invoice.paid"),
            (1, "customer.*"),
            (2, "order.*"),
            (3, "*.deleted"),
        ]);
        assert_eq!(routes.candidates("invoice.paid").collect::<Vec<_>>(), [0, 3]);
        assert_eq!(routes.candidates("customer.updated").collect::<Vec<_>>(), [1, 3]);
        assert_eq!(routes.candidates("refund").collect::<Vec<_>>(), [3]);
    }
}
