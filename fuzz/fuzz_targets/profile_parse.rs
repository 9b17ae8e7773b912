//! The client profile parser on any text: it never panics, and a profile
//! it accepts names a remote and carries the CA, certificate and key.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let no_files = |p: &Path| -> std::io::Result<String> {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            p.display().to_string(),
        ))
    };
    if let Ok(p) = cvpn_client::profile::parse(text, Path::new("/profiles"), no_files) {
        assert!(!p.remotes.is_empty());
        assert!(!p.ca_pem.is_empty() && !p.cert_pem.is_empty() && !p.key_pem.is_empty());
    }
});
