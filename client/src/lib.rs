//! cvpn-client: the profile parser (pure) and the pieces of the client's
//! host set-up (routes, DNS).

pub mod netsetup;
pub mod profile;
