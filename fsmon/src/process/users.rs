//! uid -> user name, cached: `getpwuid_r` may read files or ask NSS, far too
//! slow to do per event, and the answer practically never changes.
use std::{collections::HashMap, sync::Arc};

#[derive(Default)]
pub struct UserNames {
    names: HashMap<u32, Arc<str>>,
}

impl UserNames {
    /// The user name for `uid`, or the number when there is no such user.
    pub fn name(&mut self, uid: u32) -> &str {
        self.names.entry(uid).or_insert_with(|| lookup(uid).into())
    }

    /// The same, shared: lets a caller hold the name while it borrows the
    /// tracker again (no allocation).
    pub fn name_rc(&mut self, uid: u32) -> Arc<str> {
        self.names
            .entry(uid)
            .or_insert_with(|| lookup(uid).into())
            .clone()
    }
}

pub fn lookup(uid: u32) -> Box<str> {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => user.name.into_boxed_str(),
        _ => uid.to_string().into_boxed_str(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_unknown() {
        let mut u = UserNames::default();
        assert_eq!(u.name(0), "root");
        assert_eq!(u.name(3_999_999_999), "3999999999");
    }
}
