//! Who is asking, and what they may do: the configured bearer tokens with their roles, and the
//! caller a request turned out to be. The HTTP edge identifies the caller; the service layer
//! checks a lease's owner against it in the same critical section that changes the lease.
//!
//! Roles: `admin` does every write on any lease; `client` takes leases and heartbeats and
//! releases its own; `reader` only reads. Every token may read. With no token configured at
//! all, vramguard is open: every caller acts as an admin and leases have no owner.

use std::sync::Arc;

use crate::config::Role;

/// One configured token. Its secret never appears in `Debug` or a log.
#[derive(Clone)]
struct Entry {
    name: Arc<str>,
    secret: String,
    role: Role,
}

/// The configured tokens, and whether reads need one.
#[derive(Clone, Default)]
pub struct Credentials {
    entries: Vec<Entry>,
    protect_reads: bool,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<(&str, &str)> = self.entries.iter().map(|e| (&*e.name, e.role.as_str())).collect();
        f.debug_struct("Credentials").field("tokens", &names).field("protect_reads", &self.protect_reads).finish()
    }
}

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No token is configured: everyone may do everything, and leases have no owner.
    Open,
    /// Tokens are configured and the request carried none (an open read).
    Anonymous,
    /// The holder of a configured token.
    Token {
        /// The token's name.
        name: Arc<str>,
        /// Its role.
        role: Role,
    },
}

impl Credentials {
    /// No tokens: everything open.
    pub fn open() -> Self {
        Self::default()
    }

    /// `tokens` as (name, secret, role). Two entries with the same secret could not be told
    /// apart, so that is refused with both names.
    pub fn new(tokens: Vec<(String, String, Role)>, protect_reads: bool) -> Result<Self, String> {
        let mut entries: Vec<Entry> = Vec::with_capacity(tokens.len());
        for (name, secret, role) in tokens {
            if let Some(twin) = entries.iter().find(|e| e.secret == secret) {
                return Err(format!(
                    "tokens {:?} and {name:?} are the same token; each name needs its own",
                    &*twin.name
                ));
            }
            entries.push(Entry { name: Arc::from(name), secret, role });
        }
        Ok(Self { entries, protect_reads })
    }

    /// Just `auth.token_file`'s token: the admin.
    pub fn admin_token(secret: String) -> Self {
        let name = Arc::from(crate::config::ADMIN_TOKEN_NAME);
        Self { entries: vec![Entry { name, secret, role: Role::Admin }], protect_reads: false }
    }

    /// No token is configured.
    pub fn is_open(&self) -> bool {
        self.entries.is_empty()
    }

    /// Reads need a token.
    pub fn protect_reads(&self) -> bool {
        self.protect_reads && !self.is_open()
    }

    /// The holder of `presented`, if it is a configured token. Every entry is compared in full
    /// whatever matched, so the time taken says nothing about which token, or how much of a
    /// guess, was right.
    pub fn identify(&self, presented: &str) -> Option<Caller> {
        let mut found = None;
        for e in &self.entries {
            if constant_time_eq(presented.as_bytes(), e.secret.as_bytes()) {
                found = Some(Caller::Token { name: Arc::clone(&e.name), role: e.role });
            }
        }
        found
    }
}

impl Caller {
    /// The owner a lease taken by this caller records.
    pub fn owner(&self) -> Option<&str> {
        match self {
            Caller::Token { name, .. } => Some(name),
            Caller::Open | Caller::Anonymous => None,
        }
    }

    /// May do every write.
    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::Open | Caller::Token { role: Role::Admin, .. })
    }

    /// May heartbeat or release a lease owned by `owner`, and see its id: admins any lease, a
    /// client only its own. A lease without an owner was taken while vramguard was open; only
    /// an admin may act on it.
    pub fn may_act_on(&self, owner: Option<&str>) -> bool {
        match self {
            Caller::Open => true,
            Caller::Anonymous => false,
            Caller::Token { role: Role::Admin, .. } => true,
            Caller::Token { name, role: Role::Client } => owner == Some(&**name),
            Caller::Token { role: Role::Reader, .. } => false,
        }
    }

    /// How the caller is named in an answer.
    pub fn describe(&self) -> String {
        match self {
            Caller::Open => "an open vramguard".to_owned(),
            Caller::Anonymous => "a request without a token".to_owned(),
            Caller::Token { name, role } => format!("token {name:?} (role {})", role.as_str()),
        }
    }
}

/// Compares without an early exit, so the time taken does not reveal how much of a guess matched.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials::new(
            vec![
                ("boss".into(), "admin-secret-0123456789".into(), Role::Admin),
                ("worker-a".into(), "client-a-secret-0123456".into(), Role::Client),
                ("worker-b".into(), "client-b-secret-0123456".into(), Role::Client),
                ("prom".into(), "reader-secret-012345678".into(), Role::Reader),
            ],
            true,
        )
        .unwrap()
    }

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn tokens_identify_their_holder() {
        let c = creds();
        assert_eq!(c.identify("client-a-secret-0123456").unwrap().owner(), Some("worker-a"));
        assert!(c.identify("client-a-secret-012345").is_none());
        assert!(c.identify("").is_none());
        assert!(c.protect_reads());
        assert!(!Credentials::open().protect_reads());
        assert!(!format!("{c:?}").contains("secret-0"), "{c:?}");
    }

    #[test]
    fn a_shared_secret_is_refused_naming_both() {
        let err = Credentials::new(
            vec![
                ("a".into(), "same-secret-0123456789".into(), Role::Client),
                ("b".into(), "same-secret-0123456789".into(), Role::Admin),
            ],
            false,
        )
        .unwrap_err();
        assert!(err.contains("\"a\"") && err.contains("\"b\""), "{err}");
    }

    /// Clients act on their own leases only; admins and an open vramguard on any; readers and
    /// anonymous callers on none; a lease without an owner only for admins.
    #[test]
    fn who_may_act_on_which_lease() {
        let c = creds();
        let who = |s: &str| c.identify(s).unwrap();
        let (admin, a, reader) =
            (who("admin-secret-0123456789"), who("client-a-secret-0123456"), who("reader-secret-012345678"));
        assert!(a.may_act_on(Some("worker-a")));
        assert!(!a.may_act_on(Some("worker-b")));
        assert!(!a.may_act_on(None));
        assert!(admin.may_act_on(Some("worker-b")) && admin.may_act_on(None));
        assert!(!reader.may_act_on(Some("prom")));
        assert!(Caller::Open.may_act_on(None) && Caller::Open.is_admin());
        assert!(!Caller::Anonymous.may_act_on(None) && !Caller::Anonymous.is_admin());
        assert!(!a.is_admin() && admin.is_admin());
    }
}
