//! What a limit's RateLimit headers say that never changes from one
//! answer to the next, rendered once when the limit is built: its name as
//! an RFC 8941 sf-string, and its draft-11 `RateLimit-Policy` item at its
//! own capacity (`"plan/limit";q=100;w=60`). Issue 24: formatting them
//! on every answer was a tenth of what the headers cost.

/// A limit's constant header text. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderText {
    /// The name answers show, as an sf-string (quoted and escaped).
    pub name: Box<str>,
    /// `name;q=capacity;w=window`: the policy item for an answer whose
    /// limit is `capacity` over `window` seconds.
    pub policy: Box<str>,
    /// The capacity `policy` was rendered for.
    pub capacity: u64,
    /// The window (seconds) `policy` was rendered for.
    pub window: u64,
}

impl HeaderText {
    /// The text for a limit shown as `name`, of `capacity` units over
    /// `window` seconds.
    pub fn new(name: &str, capacity: u64, window: u64) -> Self {
        let mut quoted = String::with_capacity(name.len() + 2);
        push_sf_string(&mut quoted, name);
        let mut policy = String::with_capacity(quoted.len() + 32);
        policy.push_str(&quoted);
        push_param(&mut policy, ";q=", capacity);
        push_param(&mut policy, ";w=", window);
        Self {
            name: quoted.into(),
            policy: policy.into(),
            capacity,
            window,
        }
    }

    /// The policy item for `capacity` over `window` seconds, if it is the
    /// one rendered.
    #[inline]
    pub fn policy_for(&self, capacity: u64, window: u64) -> Option<&str> {
        (capacity == self.capacity && window == self.window).then_some(&*self.policy)
    }
}

/// Appends `name` (`;q=`) and `n` in decimal.
pub fn push_param(out: &mut String, name: &str, n: u64) {
    out.push_str(name);
    out.push_str(itoa::Buffer::new().format(n));
}

/// Appends `s` as an RFC 8941 sf-string: printable ASCII, `"` and `\`
/// escaped; anything else becomes `?` so a name can never break the field.
pub fn push_sf_string(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_name_and_the_policy_item_once() {
        let t = HeaderText::new("gold/per \"sec\"é", 100, 60);
        assert_eq!(&*t.name, r#""gold/per \"sec\"?""#);
        assert_eq!(
            t.policy_for(100, 60),
            Some(r#""gold/per \"sec\"?";q=100;w=60"#)
        );
        assert_eq!(t.policy_for(101, 60), None, "an override's capacity");
        assert_eq!(t.policy_for(100, 1), None);
    }
}
