//! Roles and what each may do (`docs/ingest.md`, "Accounts and the user file").

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// What an account may do. People are `Viewer`, `Analyst` or `Admin`, each
/// including the one before; `Device` is a meter and stands apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A meter: may publish readings under `meters/{its id}/` and nothing
    /// else.
    Device,
    /// May use the dashboard.
    Viewer,
    /// Viewer, plus SQL and Flight reads.
    Analyst,
    /// Everything, including user management and bulk import.
    Admin,
}

impl Role {
    /// Every role, in the order the CLI lists them.
    pub const ALL: [Role; 4] = [Role::Device, Role::Viewer, Role::Analyst, Role::Admin];

    /// Whether an account with this role may do what `needed` may.
    ///
    /// Among people, a higher role includes the lower ones. A device allows
    /// only `Device`, and no person allows `Device`: publishing is a meter's
    /// job, so a stolen admin password cannot forge readings as a meter, and
    /// a stolen meter secret cannot read anything.
    pub fn allows(&self, needed: Role) -> bool {
        match (self.person_rank(), needed.person_rank()) {
            (Some(have), Some(need)) => have >= need,
            (None, None) => true,
            _ => false,
        }
    }

    /// Whether this is a person's role (not `Device`).
    pub fn is_person(&self) -> bool {
        self.person_rank().is_some()
    }

    fn person_rank(&self) -> Option<u8> {
        match self {
            Role::Device => None,
            Role::Viewer => Some(1),
            Role::Analyst => Some(2),
            Role::Admin => Some(3),
        }
    }

    /// The lowercase name used on the command line and in the user file.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Device => "device",
            Role::Viewer => "viewer",
            Role::Analyst => "analyst",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "unknown role `{s}`; valid roles are device, viewer, analyst, admin"
                ))
            })
    }
}
