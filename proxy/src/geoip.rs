//! GeoIP: the client address → ISO country code, from a MaxMind `.mmdb` country database.

use std::net::IpAddr;

use maxminddb::{PathElement, Reader};

/// A loaded country database.
pub struct GeoIp {
    reader: Reader<Vec<u8>>,
    pub path: String,
}

impl std::fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoIp").field("path", &self.path).finish()
    }
}

impl GeoIp {
    pub fn open(path: &str) -> Result<GeoIp, String> {
        let reader =
            Reader::open_readfile(path).map_err(|e| format!("classify.geoip_db: {path}: {e}"))?;
        Ok(GeoIp {
            reader,
            path: path.to_string(),
        })
    }

    /// Upper-case ISO 3166 alpha-2 code of `ip`'s country, when the database knows it.
    pub fn country(&self, ip: IpAddr) -> Option<[u8; 2]> {
        let found = self.reader.lookup(ip.to_canonical()).ok()?;
        let code: &str = found
            .decode_path(&[PathElement::Key("country"), PathElement::Key("iso_code")])
            .ok()??;
        match code.as_bytes() {
            [a, b] => Some([a.to_ascii_uppercase(), b.to_ascii_uppercase()]),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_the_test_database() {
        let db = GeoIp::open(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/GeoLite2-Country-Test.mmdb"
        ))
        .expect("db");
        let cases = [
            ("89.160.20.115", Some(*b"SE")),
            ("81.2.69.160", Some(*b"GB")),
            ("216.160.83.57", Some(*b"US")),
            ("127.0.0.1", None),
        ];
        for (ip, want) in cases {
            assert_eq!(db.country(ip.parse().expect("ip")), want, "{ip}");
        }
        assert!(
            GeoIp::open("/nonexistent.mmdb")
                .expect_err("missing")
                .contains("/nonexistent.mmdb")
        );
    }
}
