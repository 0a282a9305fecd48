//! Just enough DER to read a certificate's `notAfter` (RFC 5280 §4.1.2.5), for expiry metrics,
//! and its issuer's name, for `proxyctl certs`.

/// Reads one DER element at `pos`: (tag, content range end, content start).
fn element(der: &[u8], pos: usize) -> Option<(u8, usize, usize)> {
    let tag = *der.get(pos)?;
    let first = *der.get(pos + 1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | usize::from(*der.get(pos + 2 + i)?);
        }
        (len, 2 + n)
    };
    let start = pos + header;
    let end = start.checked_add(len)?;
    (end <= der.len()).then_some((tag, end, start))
}

/// Where the `n`th field of the tbsCertificate starts (0: serialNumber, 1: signature, 2: issuer,
/// 3: validity, 4: subject, 5: subjectPublicKeyInfo, 6: what follows), skipping the optional
/// `[0]` version; and where the tbsCertificate ends.
fn tbs_field(der: &[u8], n: usize) -> Option<(usize, usize)> {
    let (_, _, cert) = element(der, 0)?; // Certificate SEQUENCE
    let (_, tbs_end, mut pos) = element(der, cert)?; // tbsCertificate SEQUENCE
    let (tag, end, _) = element(der, pos)?;
    if tag == 0xa0 {
        pos = end;
    }
    for _ in 0..n {
        pos = element(der, pos)?.1;
    }
    Some((pos, tbs_end))
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn parse_time(tag: u8, text: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(text).ok()?;
    let (year, rest) = match tag {
        0x17 => {
            // UTCTime: YYMMDDHHMMSSZ; 50..99 → 19xx (RFC 5280).
            let yy: i64 = s.get(0..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, s.get(2..)?)
        }
        0x18 => (s.get(0..4)?.parse().ok()?, s.get(4..)?),
        _ => return None,
    };
    let num = |r: std::ops::Range<usize>| rest.get(r).and_then(|v| v.parse::<i64>().ok());
    let (mo, d, h, mi, se) = (num(0..2)?, num(2..4)?, num(4..6)?, num(6..8)?, num(8..10)?);
    if !rest.ends_with('Z') {
        return None;
    }
    Some(days_from_civil(year, mo, d) * 86_400 + h * 3600 + mi * 60 + se)
}

/// The certificate's `notAfter`, as Unix seconds.
pub fn not_after_unix(der: &[u8]) -> Option<i64> {
    let (pos, _) = tbs_field(der, 3)?; // validity
    let (_, _, validity) = element(der, pos)?;
    let (_, not_before_end, _) = element(der, validity)?;
    let (tag, end, start) = element(der, not_before_end)?;
    parse_time(tag, &der[start..end])
}

/// The DNS names in the certificate's subjectAltName extension (RFC 5280 §4.2.1.6).
pub fn dns_names(der: &[u8]) -> Vec<String> {
    dns_names_inner(der).unwrap_or_default()
}

fn dns_names_inner(der: &[u8]) -> Option<Vec<String>> {
    let (mut pos, tbs_end) = tbs_field(der, 6)?;
    // After subjectPublicKeyInfo: optional [1] issuerUniqueID, [2] subjectUniqueID, then [3] extensions.
    while pos < tbs_end {
        let (tag, end, start) = element(der, pos)?;
        if tag == 0xa3 {
            let (_, exts_end, mut ext) = element(der, start)?;
            const SAN: [u8; 3] = [0x55, 0x1d, 0x11];
            while ext < exts_end {
                let (_, ext_end, inner) = element(der, ext)?;
                let (_, oid_end, oid_start) = element(der, inner)?;
                if der[oid_start..oid_end] == SAN {
                    let mut p = oid_end;
                    let (mut t, mut e, mut s) = element(der, p)?;
                    if t == 0x01 {
                        // critical BOOLEAN
                        p = e;
                        (t, e, s) = element(der, p)?;
                    }
                    if t != 0x04 {
                        return None;
                    }
                    let (_, names_end, mut name) = element(der, s)?;
                    let mut out = Vec::new();
                    while name < names_end.min(e) {
                        let (tag, end, start) = element(der, name)?;
                        if tag == 0x82 {
                            out.push(
                                String::from_utf8_lossy(&der[start..end]).to_ascii_lowercase(),
                            );
                        }
                        name = end;
                    }
                    return Some(out);
                }
                ext = ext_end;
            }
            return Some(Vec::new());
        }
        pos = end;
    }
    Some(Vec::new())
}

/// The issuer's common name (or, without one, its organization), for display.
pub fn issuer_name(der: &[u8]) -> Option<String> {
    let (pos, _) = tbs_field(der, 2)?; // issuer
    let (_, issuer_end, mut rdn) = element(der, pos)?; // issuer Name: SEQUENCE of SETs
    const CN: [u8; 3] = [0x55, 0x04, 0x03];
    const O: [u8; 3] = [0x55, 0x04, 0x0a];
    let (mut cn, mut org) = (None, None);
    while rdn < issuer_end {
        let (_, set_end, mut atv) = element(der, rdn)?;
        while atv < set_end {
            let (_, atv_end, inner) = element(der, atv)?; // AttributeTypeAndValue
            let (oid_tag, oid_end, oid_start) = element(der, inner)?;
            let (_, value_end, value_start) = element(der, oid_end)?;
            let value = String::from_utf8_lossy(&der[value_start..value_end]).into_owned();
            if oid_tag == 0x06 && der[oid_start..oid_end] == CN {
                cn = Some(value);
            } else if oid_tag == 0x06 && der[oid_start..oid_end] == O {
                org = Some(value);
            }
            atv = atv_end;
        }
        rdn = set_end;
    }
    cn.or(org)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    #[test]
    fn reads_not_after() {
        for (y, m, d) in [(2031, 7, 4), (2049, 12, 31), (2050, 1, 1), (1999, 3, 1)] {
            let mut params =
                rcgen::CertificateParams::new(vec!["a.test".to_string()]).expect("params");
            params.not_after = rcgen::date_time_ymd(y, m, d);
            let key = rcgen::KeyPair::generate().expect("key");
            let pem = params.self_signed(&key).expect("cert").pem();
            let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("der");
            let want = days_from_civil(i64::from(y), i64::from(m), i64::from(d)) * 86_400;
            assert_eq!(not_after_unix(&der), Some(want), "{y}-{m}-{d}");
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(
            not_after_unix(b"\x30\x03\x02\x01"),
            None,
            "truncated input is not a panic"
        );
        assert_eq!(not_after_unix(&[]), None);
    }

    #[test]
    fn reads_the_issuer_name() {
        let ca = crate::dev::DevCa::new("Issuer Test CA").expect("ca");
        let leaf = ca.issue(&["a.test"]).expect("leaf");
        let der = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).expect("der");
        assert_eq!(issuer_name(&der).as_deref(), Some("Issuer Test CA"));
        assert_eq!(issuer_name(b"\x30\x03\x02\x01"), None);
    }

    #[test]
    fn reads_dns_names() {
        let ca = crate::dev::DevCa::new("SAN CA").expect("ca");
        let leaf = ca
            .issue(&["A.test", "*.b.test", "127.0.0.1"])
            .expect("leaf");
        let der = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).expect("der");
        assert_eq!(
            dns_names(&der),
            ["a.test", "*.b.test"],
            "IP SANs are not DNS names"
        );
        assert!(dns_names(b"\x30\x03\x02\x01").is_empty());
    }
}
