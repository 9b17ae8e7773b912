use std::fmt;
use std::str::FromStr;

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ED25519, PKCS_RSA_SHA256, RsaKeySize};
use serde::{Deserialize, Serialize};

use crate::PkiError;

/// The key algorithms the CA issues. RSA exists for OpenVPN-based clients
/// that need it; ECDSA P-256 is the default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyType {
    #[default]
    EcdsaP256,
    Ed25519,
    Rsa2048,
}

impl KeyType {
    pub fn generate(self) -> Result<KeyPair, PkiError> {
        Ok(match self {
            KeyType::EcdsaP256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?,
            KeyType::Ed25519 => KeyPair::generate_for(&PKCS_ED25519)?,
            KeyType::Rsa2048 => KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048)?,
        })
    }

    /// The key type of an existing key, e.g. the CA's.
    pub fn of(key: &KeyPair) -> Option<KeyType> {
        let alg = key.algorithm();
        if alg == &PKCS_ECDSA_P256_SHA256 {
            Some(KeyType::EcdsaP256)
        } else if alg == &PKCS_ED25519 {
            Some(KeyType::Ed25519)
        } else if alg == &PKCS_RSA_SHA256 {
            Some(KeyType::Rsa2048)
        } else {
            None
        }
    }
}

impl FromStr for KeyType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ecdsa-p256" => Ok(KeyType::EcdsaP256),
            "ed25519" => Ok(KeyType::Ed25519),
            "rsa-2048" => Ok(KeyType::Rsa2048),
            _ => Err(format!(
                "unknown key type {s:?}: use ecdsa-p256, ed25519 or rsa-2048"
            )),
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::Ed25519 => "ed25519",
            KeyType::Rsa2048 => "rsa-2048",
        })
    }
}
