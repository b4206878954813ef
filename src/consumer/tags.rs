//! RocketMQ's tag subscription (`FilterAPI`): `*` (or nothing) takes every message; `TagA ||
//! TagB` takes messages whose tag is one of them. Pure: no I/O.

/// A tag subscription expression, parsed.
///
/// ```
/// use duolog::consumer::TagFilter;
/// let f = TagFilter::parse("TagA || TagB");
/// assert!(f.matches(Some("TagB")));
/// assert!(!f.matches(Some("TagC")) && !f.matches(None));
/// assert!(TagFilter::parse("*").matches(None));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TagFilter {
    /// Every message, with or without a tag.
    All,
    /// Messages whose tag is one of these (trimmed, non-empty, deduplicated, sorted).
    Tags(Vec<String>),
}

impl TagFilter {
    /// Parses `*`, an empty expression (both: every message) or tags joined by `||`. Empty
    /// parts are dropped, as RocketMQ's client does; an expression with `*` among tags is `*`.
    pub fn parse(expr: &str) -> TagFilter {
        let expr = expr.trim();
        if expr.is_empty() || expr == "*" {
            return TagFilter::All;
        }
        let mut tags: Vec<String> = expr
            .split("||")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect();
        if tags.is_empty() || tags.iter().any(|t| t == "*") {
            return TagFilter::All;
        }
        tags.sort();
        tags.dedup();
        TagFilter::Tags(tags)
    }

    /// Whether a message with this tag passes.
    pub fn matches(&self, tag: Option<&str>) -> bool {
        match self {
            TagFilter::All => true,
            TagFilter::Tags(tags) => tag.is_some_and(|t| tags.iter().any(|x| x == t)),
        }
    }

    /// The tags, or `None` for every message.
    pub fn tags(&self) -> Option<&[String]> {
        match self {
            TagFilter::All => None,
            TagFilter::Tags(t) => Some(t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_rocketmq() {
        assert_eq!(TagFilter::parse(""), TagFilter::All);
        assert_eq!(TagFilter::parse(" * "), TagFilter::All);
        assert_eq!(TagFilter::parse("A || * "), TagFilter::All);
        assert_eq!(
            TagFilter::parse(" B ||A|| ||A"),
            TagFilter::Tags(vec!["A".into(), "B".into()])
        );
        assert_eq!(TagFilter::parse("||"), TagFilter::All);
    }
}
