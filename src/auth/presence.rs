//! Who a presence member is, as the credential allows it.

use std::sync::Arc;

use super::{covers, Auth, AuthError, MemberIdentity, Principal};

impl Auth {
    /// Who `p` is as a member of `channel`. A token says it (`sub`, `info`) and needs a
    /// `presence_channels` grant; open mode and API keys (a trusted backend) state the user
    /// in the request. A request that contradicts its token is refused, never corrected.
    pub fn presence_identity(
        &self,
        p: &Principal,
        channel: &str,
        user: Option<&str>,
        info: Option<Arc<serde_json::Value>>,
    ) -> Result<MemberIdentity, AuthError> {
        match p {
            Principal::Open | Principal::Admin { .. } => match user {
                Some(u) => Ok((u.to_string(), info)),
                None => Err(AuthError::NoIdentity(
                    "a presence member needs a user: give `user` (and optionally `info`)".into(),
                )),
            },
            Principal::Anonymous => Err(AuthError::PresenceForbidden(
                "presence needs a token with a presence_channels grant".into(),
            )),
            Principal::Token {
                sub,
                presence,
                info: claimed,
                ..
            } => {
                if !presence.iter().any(|g| covers(g, channel)) {
                    return Err(AuthError::PresenceForbidden(format!(
                        "the token's presence_channels do not cover {channel:?}"
                    )));
                }
                let Some(sub) = sub else {
                    return Err(AuthError::NoIdentity(
                        "a presence member needs a user: the token has no sub".into(),
                    ));
                };
                if user.is_some_and(|u| u != sub) {
                    return Err(AuthError::NoIdentity(
                        "user differs from the token's sub; a token's member is its sub".into(),
                    ));
                }
                if info.is_some() {
                    return Err(AuthError::NoIdentity(
                        "info comes from the token's info claim, not the request".into(),
                    ));
                }
                Ok((sub.clone(), claimed.clone()))
            }
        }
    }
}
