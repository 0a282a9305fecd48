//! Reports: a JSON summary and one self-contained HTML page (inline SVG plots: latency over
//! time, the latency percentile curve) with the verdicts.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::engine::Summary;

/// One checked assertion.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub name: String,
    pub pass: bool,
    pub detail: String,
}

impl Verdict {
    pub fn check(name: &str, pass: bool, detail: impl Into<String>) -> Verdict {
        Verdict {
            name: name.into(),
            pass,
            detail: detail.into(),
        }
    }
}

/// A finished run: what was measured and what was concluded.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub title: String,
    pub summary: Summary,
    pub verdicts: Vec<Verdict>,
    /// Extra notes (e.g. drill phases and timings).
    pub notes: Vec<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.verdicts.iter().all(|v| v.pass)
    }

    /// Human text for the terminal.
    pub fn text(&self) -> String {
        let s = &self.summary;
        let mut out = format!(
            "{}\n  {} requests in {:.1}s ({:.0}/s); failed {} ({:.2}%); residency refusals {}; leaks {}\n  latency ms: {}\n",
            self.title,
            s.requests,
            s.elapsed_s,
            s.rps,
            s.failed,
            s.error_rate * 100.0,
            s.refused,
            s.leaks,
            s.latency_ms
                .iter()
                .map(|(k, v)| format!("{k} {v:.2}"))
                .collect::<Vec<_>>()
                .join("  ")
        );
        for v in &s.by_version {
            let _ = writeln!(
                out,
                "  {:<18} {:<8} {:>7} req  errors {:>5.2}%  p50 {:>7.2}ms  p99 {:>7.2}ms",
                v.region,
                v.version,
                v.requests,
                v.error_rate * 100.0,
                v.p50_ms,
                v.p99_ms
            );
        }
        for n in &self.notes {
            let _ = writeln!(out, "  note: {n}");
        }
        for v in &self.verdicts {
            let _ = writeln!(
                out,
                "  [{}] {}: {}",
                if v.pass { "PASS" } else { "FAIL" },
                v.name,
                v.detail
            );
        }
        out
    }

    /// Writes `summary.json` and `report.html` into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(dir.join("summary.json"), json)?;
        std::fs::write(dir.join("report.html"), self.html())
    }

    pub fn html(&self) -> String {
        let s = &self.summary;
        let mut h = String::new();
        let _ = write!(
            h,
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>body{{font:14px system-ui,sans-serif;margin:2em;max-width:960px}}table{{border-collapse:collapse}}td,th{{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}}.pass{{color:#07631b}}.fail{{color:#b00020;font-weight:bold}}svg{{background:#fafafa;border:1px solid #ddd}}</style></head><body><h1>{t}</h1>",
            t = escape(&self.title)
        );
        let _ = write!(
            h,
            "<p>{} requests in {:.1} s ({:.0}/s) · failed {} ({:.2}%) · residency refusals {} · leaks <b>{}</b></p>",
            s.requests,
            s.elapsed_s,
            s.rps,
            s.failed,
            s.error_rate * 100.0,
            s.refused,
            s.leaks
        );
        h.push_str("<h2>Verdicts</h2><table><tr><th></th><th>check</th><th>detail</th></tr>");
        for v in &self.verdicts {
            let (class, word) = if v.pass {
                ("pass", "PASS")
            } else {
                ("fail", "FAIL")
            };
            let _ = write!(
                h,
                "<tr><td class=\"{class}\">{word}</td><td>{}</td><td>{}</td></tr>",
                escape(&v.name),
                escape(&v.detail)
            );
        }
        h.push_str("</table>");
        for n in &self.notes {
            let _ = write!(h, "<p>{}</p>", escape(n));
        }
        h.push_str("<h2>Latency over time</h2>");
        let p50: Vec<(f64, f64)> = s.timeline.iter().map(|x| (x.t as f64, x.p50_ms)).collect();
        let p99: Vec<(f64, f64)> = s.timeline.iter().map(|x| (x.t as f64, x.p99_ms)).collect();
        h.push_str(&svg_lines(
            &[("p50", "#1f77b4", &p50), ("p99", "#d62728", &p99)],
            "seconds",
            "ms",
            false,
        ));
        h.push_str("<h2>Requests and errors per second</h2>");
        let rps: Vec<(f64, f64)> = s
            .timeline
            .iter()
            .map(|x| (x.t as f64, x.requests as f64))
            .collect();
        let errs: Vec<(f64, f64)> = s
            .timeline
            .iter()
            .map(|x| (x.t as f64, x.errors as f64))
            .collect();
        h.push_str(&svg_lines(
            &[("requests", "#2ca02c", &rps), ("failed", "#d62728", &errs)],
            "seconds",
            "per second",
            false,
        ));
        h.push_str("<h2>Latency percentiles</h2>");
        // x: -log10(1 - q), so 90%, 99%, 99.9% are evenly spaced.
        let curve: Vec<(f64, f64)> = s
            .percentile_curve
            .iter()
            .map(|(q, ms)| (-(1.0 - q.min(0.99999)).log10(), *ms))
            .collect();
        h.push_str(&svg_lines(
            &[("latency", "#9467bd", &curve)],
            "percentile (0 = p0, 1 = p90, 2 = p99, 3 = p99.9)",
            "ms",
            true,
        ));
        h.push_str("<h2>By region and version</h2><table><tr><th>region</th><th>version</th><th>requests</th><th>errors</th><th>p50 ms</th><th>p99 ms</th></tr>");
        for v in &s.by_version {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.2}%</td><td>{:.2}</td><td>{:.2}</td></tr>",
                escape(&v.region),
                escape(&v.version),
                v.requests,
                v.error_rate * 100.0,
                v.p50_ms,
                v.p99_ms
            );
        }
        h.push_str("</table><h2>Country → served region</h2><table>");
        for (k, n) in &s.by_country_region {
            let _ = write!(h, "<tr><td>{}</td><td>{n}</td></tr>", escape(k));
        }
        h.push_str("</table></body></html>\n");
        h
    }
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A named, coloured line: (name, CSS colour, points).
type Series<'a> = (&'a str, &'a str, &'a Vec<(f64, f64)>);

/// A small line chart as inline SVG.
fn svg_lines(series: &[Series<'_>], x_label: &str, y_label: &str, points: bool) -> String {
    let (w, hgt, pad) = (880.0, 260.0, 50.0);
    let all = series.iter().flat_map(|(_, _, s)| s.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for (x, y) in all {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y1 = y1.max(*y);
    }
    if x0 > x1 {
        return "<p>(no data)</p>".into();
    }
    if (x1 - x0).abs() < f64::EPSILON {
        x1 = x0 + 1.0;
    }
    let y1 = if y1 <= 0.0 { 1.0 } else { y1 * 1.1 };
    let sx = |x: f64| pad + (x - x0) / (x1 - x0) * (w - 2.0 * pad);
    let sy = |y: f64| hgt - pad + -(y / y1) * (hgt - 2.0 * pad);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{hgt}\" viewBox=\"0 0 {w} {hgt}\">"
    );
    let _ = write!(
        out,
        "<line x1=\"{pad}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#888\"/><line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{b}\" stroke=\"#888\"/>",
        b = hgt - pad,
        r = w - pad
    );
    for k in 0..=4 {
        let y = y1 * f64::from(k) / 4.0;
        let _ = write!(
            out,
            "<text x=\"4\" y=\"{:.1}\" font-size=\"11\">{:.1}</text>",
            sy(y) + 4.0,
            y
        );
    }
    let _ = write!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\">{x0:.0}</text><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\">{x1:.0}</text>",
        pad,
        hgt - pad + 16.0,
        w - pad - 20.0,
        hgt - pad + 16.0
    );
    let _ = write!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\">{}</text><text x=\"4\" y=\"14\" font-size=\"12\">{}</text>",
        w / 2.0 - 60.0,
        hgt - 8.0,
        escape(x_label),
        escape(y_label)
    );
    for (i, (name, color, data)) in series.iter().enumerate() {
        let pts: Vec<String> = data
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let _ = write!(
            out,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>",
            pts.join(" ")
        );
        if points {
            for (x, y) in data.iter() {
                let _ = write!(
                    out,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{color}\"/>",
                    sx(*x),
                    sy(*y)
                );
            }
        }
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" fill=\"{color}\">{}</text>",
            w - pad - 120.0,
            pad + 14.0 * i as f64,
            escape(name)
        );
    }
    out.push_str("</svg>");
    out
}
