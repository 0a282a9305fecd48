//! Inputs for frontdoor's micro-benchmarks: realistic configs built in code.

#![forbid(unsafe_code)]

/// A config with `n` routes spread over 50 exact hosts, 10 wildcard hosts and any-host
/// prefixes, all pointing at three clusters in three regions.
pub fn route_table_config(n: usize) -> String {
    let mut text = String::from(
        "[regions]\nus-central1 = { jurisdiction = \"us\" }\neurope-west1 = { jurisdiction = \"eu\" }\nasia-southeast1 = { jurisdiction = \"apac\" }\n[residency]\neu = [\"europe-west1\"]\n",
    );
    for (i, region) in ["us-central1", "europe-west1", "asia-southeast1"]
        .iter()
        .enumerate()
    {
        text.push_str(&format!(
            "[clusters.c{i}]\nendpoints = [{{ address = \"127.0.0.1:{}\", region = \"{region}\", version = \"stable\" }}]\n",
            9000 + i
        ));
    }
    for i in 0..n {
        let hosts = match i % 3 {
            0 => format!("hosts = [\"h{}.example.com\"]\n", i % 50),
            1 => format!("hosts = [\"*.w{}.example.net\"]\n", i % 10),
            _ => String::new(),
        };
        text.push_str(&format!(
            "[[routes]]\nname = \"r{i}\"\n{hosts}path_prefix = \"/svc{i}/v{}\"\ncluster = \"c{}\"\n",
            i % 3,
            i % 3
        ));
    }
    text.push_str("[[routes]]\nname = \"fallback\"\ncluster = \"c0\"\n");
    text
}
