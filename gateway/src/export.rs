//! The client profile `export-profile` writes: OpenVPN configuration syntax
//! with the CA, the client's certificate and key inline.

/// What goes into a profile.
pub struct ProfileParts<'a> {
    pub remote_host: &'a str,
    pub remote_port: u16,
    /// The name the client checks on the gateway's certificate.
    pub server_name: &'a str,
    pub ca_pem: &'a str,
    pub cert_pem: &'a str,
    pub key_pem: &'a str,
    /// `proto udp`: the endpoint runs the datagram channel.
    pub udp: bool,
}

pub fn render_profile(p: &ProfileParts<'_>) -> String {
    let block = |tag: &str, body: &str| format!("<{tag}>\n{}\n</{tag}>\n", body.trim_end());
    let mut s = String::new();
    s.push_str("# cvpn client profile: cvpn-client connect THIS_FILE\n");
    s.push_str("# It holds a private key: keep it as secret as a password.\n");
    s.push_str("client\ndev tun\n");
    s.push_str(if p.udp { "proto udp\n" } else { "proto tcp\n" });
    s.push_str(&format!("remote {} {}\n", p.remote_host, p.remote_port));
    s.push_str(&format!("verify-x509-name {} name\n", p.server_name));
    s.push_str("connect-retry 1 30\n");
    s.push_str(&block("ca", p.ca_pem));
    s.push_str(&block("cert", p.cert_pem));
    s.push_str(&block("key", p.key_pem));
    s
}
