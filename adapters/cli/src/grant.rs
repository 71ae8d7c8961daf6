//! `--allow` grants: a peer key and, optionally, the origins it may pull and push.
//!
//! ```text
//! GRANT  := KEY ( SEP RIGHT )*          SEP := ':' or whitespace
//! RIGHT  := ( "pull" | "push" ) "=" SCOPE
//! SCOPE  := "all" | "none" | ORIGIN ( "," ORIGIN )*
//! ORIGIN := "self" (the peer's own log) | KEY (that node's log)
//! ```
//!
//! A right left out is `all`: `KEY` alone may pull and push everything. Origins are
//! named by their whole key, never by node id, and every key a grant names is trusted as
//! an origin (chunks of it are checked against it).

use chunk_sync_tokio::{Access, PublicKey, Scope};

use crate::keys::parse_key;

/// One peer key's rights, and the origin keys they name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Grant {
    /// The peer's key.
    pub(crate) key: PublicKey,
    /// What it may do.
    pub(crate) access: Access,
    /// Every key the grant names (the peer's among them): trusted origins.
    pub(crate) origins: Vec<PublicKey>,
}

/// Parses one grant (see the module docs).
pub(crate) fn parse(text: &str) -> Result<Grant, String> {
    let mut fields = text
        .split(|c: char| c == ':' || c.is_whitespace())
        .filter(|f| !f.is_empty());
    let key = parse_key(fields.next().unwrap_or(""))?;
    let mut grant = Grant {
        key,
        access: Access::FULL,
        origins: vec![key],
    };
    let (mut pull, mut push) = (false, false);
    for field in fields {
        let (right, scope) = field.split_once('=').ok_or_else(|| {
            format!("`{field}`: a right is pull=… or push=… (all, none, self or origin keys)")
        })?;
        let (slot, seen) = match right {
            "pull" => (&mut grant.access.pull, &mut pull),
            "push" => (&mut grant.access.push, &mut push),
            _ => return Err(format!("`{right}`: the rights are pull and push")),
        };
        if std::mem::replace(seen, true) {
            return Err(format!("`{right}` is given twice"));
        }
        *slot = parse_scope(scope, &key, &mut grant.origins)?;
    }
    if grant.access.is_none() {
        return Err(
            "a grant of pull=none and push=none lets the key do nothing: leave it out".into(),
        );
    }
    Ok(grant)
}

/// A scope: `all`, `none`, or origins (`self`, keys), adding each key to `named`.
fn parse_scope(text: &str, peer: &PublicKey, named: &mut Vec<PublicKey>) -> Result<Scope, String> {
    match text {
        "all" => return Ok(Scope::All),
        "none" => return Ok(Scope::Nothing),
        "" => return Err("an empty scope: say all, none, self or origin keys".into()),
        _ => {}
    }
    let mut ids = Vec::new();
    for origin in text.split(',') {
        let key = match origin {
            "self" => *peer,
            other => parse_key(other)?,
        };
        if !named.contains(&key) {
            named.push(key);
        }
        ids.push(key.node_id());
    }
    Scope::only(&ids).map_err(|e| format!("{e}: grant all instead"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chunk_sync_tokio::Keypair;

    fn key(seed: u8) -> PublicKey {
        *Keypair::from_secret([seed; 32]).public()
    }

    #[test]
    fn a_key_alone_may_do_everything() {
        let g = parse(&key(1).to_string()).unwrap();
        assert_eq!(g.access, Access::FULL);
        assert_eq!(g.origins, [key(1)]);
    }

    #[test]
    fn rights_name_origins_by_key_or_self() {
        let text = format!("{}:pull={},self:push=self", key(1), key(2));
        let g = parse(&text).unwrap();
        assert_eq!(
            g.access.pull,
            Scope::only(&[key(2).node_id(), key(1).node_id()]).unwrap()
        );
        assert_eq!(g.access.push, Scope::only(&[key(1).node_id()]).unwrap());
        assert_eq!(g.origins, [key(1), key(2)]);
        // Whitespace separates fields as well (allow files).
        let spaced = format!("{} pull={},self  push=self", key(1), key(2));
        assert_eq!(parse(&spaced).unwrap(), g);
    }

    #[test]
    fn bad_grants_say_what_is_wrong() {
        let k = key(1).to_string();
        for (text, says) in [
            (format!("{k}:read=all"), "the rights are pull and push"),
            (format!("{k}:pull"), "a right is pull="),
            (format!("{k}:pull=all:pull=none"), "given twice"),
            (format!("{k}:pull=abc"), "64 hex digits"),
            (format!("{k}:pull="), "an empty scope"),
            (
                format!("{k}:pull=none:push=none"),
                "lets the key do nothing",
            ),
            ("zz".to_owned(), "64 hex digits"),
        ] {
            let err = parse(&text).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
        let many: Vec<String> = (1..=17).map(|s| key(s).to_string()).collect();
        let err = parse(&format!("{k}:pull={}", many.join(","))).unwrap_err();
        assert!(err.contains("grant all instead"), "{err}");
    }
}
