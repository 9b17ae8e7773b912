//! The client profile `export-profile` writes: OpenVPN configuration syntax
//! with the CA, the client's certificate and key inline, which both the
//! stock `openvpn` client and `cvpn-client` take unchanged.

/// How long a client gives one node of a cluster to answer before it
/// tries the next (seconds).
pub const SERVER_POLL_TIMEOUT: u32 = 2;

/// What goes into a profile.
pub struct ProfileParts<'a> {
    /// Where clients connect (HOST, PORT): several for a cluster.
    pub remotes: &'a [(String, u16)],
    /// The name the client checks on the gateway's certificate.
    pub server_name: &'a str,
    pub ca_pem: &'a str,
    pub cert_pem: &'a str,
    pub key_pem: &'a str,
    /// `proto udp`: the endpoint serves UDP.
    pub udp: bool,
    /// The endpoint's tls-crypt key file, embedded for OpenVPN clients.
    pub tls_crypt: Option<&'a str>,
}

/// The profile's text.
pub fn render_profile(p: &ProfileParts<'_>) -> String {
    let block = |tag: &str, body: &str| format!("<{tag}>\n{}\n</{tag}>\n", body.trim_end());
    let mut s = String::new();
    s.push_str("# cvpn client profile: cvpn-client connect THIS_FILE\n");
    s.push_str("# It holds a private key: keep it as secret as a password.\n");
    s.push_str("client\ndev tun\n");
    s.push_str(if p.udp { "proto udp\n" } else { "proto tcp\n" });
    for (host, port) in p.remotes {
        s.push_str(&format!("remote {host} {port}\n"));
    }
    if p.remotes.len() > 1 {
        // A cluster's nodes: clients spread over them, and one that does
        // not answer is given up on in seconds for the next.
        s.push_str("remote-random\n");
        s.push_str(&format!("server-poll-timeout {SERVER_POLL_TIMEOUT}\n"));
    }
    s.push_str(&format!("verify-x509-name {} name\n", p.server_name));
    // OpenVPN checks the server certificate's key usage and serverAuth
    // (cvpn-client's TLS checks serverAuth anyway).
    s.push_str("remote-cert-tls server\n");
    s.push_str("connect-retry 1 30\n");
    if p.udp {
        // Over UDP the endpoint learns at once that an OpenVPN client left.
        s.push_str("explicit-exit-notify\n");
    }
    s.push_str(&block("ca", p.ca_pem));
    s.push_str(&block("cert", p.cert_pem));
    s.push_str(&block("key", p.key_pem));
    if let Some(k) = p.tls_crypt {
        s.push_str(&block("tls-crypt", k));
    }
    s
}
