//! cvpn-pki: the certificate authority of a cvpn endpoint.
//!
//! Pure pieces (name rules, the index model, certificate generation and
//! inspection) are separate from the directory store, which owns all file I/O.

pub mod error;
pub mod index;
pub mod inspect;
pub mod issue;
pub mod keytype;
pub mod names;
pub mod store;
mod subject;

pub use error::PkiError;
pub use index::{CertKind, CertState, Entry, Index};
pub use inspect::{
    CertInfo, ClientIdentity, CrlCheck, check_crl, client_identity, crl_serials, inspect_cert,
};
pub use keytype::KeyType;
pub use store::Store;
