//! Builders of metric families and samples, shared by every part of the exposition.
//!
//! The snapshot's and the policy's series are written straight into the text format, byte for
//! byte what the prometheus crate's `TextEncoder` writes for the same family (a test holds the
//! two together): a scrape after a new sample renders hundreds of samples, and going through
//! the protobuf structs first (several allocations per label) was most of its cost. vramguard's
//! own process series, which the registry gathers, are built as protobuf families ([`proto`]).

use std::fmt::Write as _;

/// One sample: its labels and value in the text format, without the family name (`{a="b"} 1`).
pub(super) struct Sample(String);

/// A gauge or counter sample. The family decides the type; both write the same line.
pub(super) fn sample(labels: &[(&str, &str)], value: f64) -> Sample {
    let mut s = String::with_capacity(16 + labels.iter().map(|(k, v)| k.len() + v.len() + 4).sum::<usize>());
    if !labels.is_empty() {
        let mut sep = '{';
        for (name, v) in labels {
            s.push(sep);
            s.push_str(name);
            s.push_str("=\"");
            escape_into(&mut s, v, true);
            s.push('"');
            sep = ',';
        }
        s.push('}');
    }
    // Writing to a String cannot fail. f64's Display is what the TextEncoder writes too.
    let _ = write!(s, " {value}");
    Sample(s)
}

/// Adds a sample for `value` when there is one: a reading that is unavailable has no series,
/// never a 0. For gauges and counters alike.
pub(super) fn push_some(into: &mut Vec<Sample>, labels: &[(&str, &str)], value: Option<f64>) {
    if let Some(v) = value {
        into.push(sample(labels, v));
    }
}

/// A counter sample (the same line as a gauge's; the family carries the type).
pub(super) fn counter(labels: &[(&str, &str)], value: f64) -> Sample {
    sample(labels, value)
}

/// One family in the text format: `# HELP`, `# TYPE`, then its samples.
pub(super) struct Family {
    name: String,
    /// The whole block; empty when the family has no samples (such a family is not written).
    text: String,
}

impl Family {
    /// The metric name.
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// The family's text, `None` for one without samples.
    pub(super) fn into_text(self) -> Option<String> {
        (!self.text.is_empty()).then_some(self.text)
    }
}

/// A gauge family.
pub(super) fn family(name: &str, help: &str, samples: Vec<Sample>) -> Family {
    typed(name, help, "gauge", samples)
}

/// A counter family.
pub(super) fn counter_family(name: &str, help: &str, samples: Vec<Sample>) -> Family {
    typed(name, help, "counter", samples)
}

fn typed(name: &str, help: &str, kind: &str, samples: Vec<Sample>) -> Family {
    let mut text = String::new();
    if !samples.is_empty() {
        let size = samples.iter().map(|s| s.0.len() + name.len() + 1).sum::<usize>();
        text.reserve(2 * name.len() + help.len() + 24 + size);
        text.push_str("# HELP ");
        text.push_str(name);
        text.push(' ');
        escape_into(&mut text, help, false);
        text.push_str("\n# TYPE ");
        text.push_str(name);
        text.push(' ');
        text.push_str(kind);
        text.push('\n');
        for s in &samples {
            text.push_str(name);
            text.push_str(&s.0);
            text.push('\n');
        }
    }
    Family { name: name.to_owned(), text }
}

/// `families` (those without samples dropped) sorted by name, as one text.
pub(super) fn encode(mut families: Vec<Family>) -> String {
    families.retain(|f| !f.text.is_empty());
    families.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = String::with_capacity(families.iter().map(|f| f.text.len()).sum());
    for f in &families {
        out.push_str(&f.text);
    }
    out
}

/// The text format's escaping: `\` and newline always, `"` in label values.
fn escape_into(out: &mut String, v: &str, quote: bool) {
    if !v.bytes().any(|b| b == b'\\' || b == b'\n' || (quote && b == b'"')) {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// Protobuf families, for collectors the registry gathers.
pub(super) mod proto {
    use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

    /// One counter sample.
    pub(in crate::metrics) fn counter(labels: &[(&str, &str)], value: f64) -> Metric {
        let mut c = Counter::default();
        c.set_value(value);
        let mut m = Metric::from_label(sample(labels, 0.0).take_label());
        m.set_counter(c);
        m
    }

    /// A counter family.
    pub(in crate::metrics) fn counter_family(name: &str, help: &str, metrics: Vec<Metric>) -> MetricFamily {
        let mut f = family(name, help, metrics);
        f.set_field_type(MetricType::COUNTER);
        f
    }

    /// A gauge family.
    pub(in crate::metrics) fn family(name: &str, help: &str, metrics: Vec<Metric>) -> MetricFamily {
        let mut f = MetricFamily::default();
        f.set_name(name.to_owned());
        f.set_help(help.to_owned());
        f.set_field_type(MetricType::GAUGE);
        f.set_metric(metrics);
        f
    }

    /// One gauge sample.
    pub(in crate::metrics) fn sample(labels: &[(&str, &str)], value: f64) -> Metric {
        let mut g = Gauge::default();
        g.set_value(value);
        let mut m = Metric::default();
        m.set_label(
            labels
                .iter()
                .map(|(k, v)| {
                    let mut l = LabelPair::default();
                    l.set_name((*k).to_owned());
                    l.set_value((*v).to_owned());
                    l
                })
                .collect(),
        );
        m.set_gauge(g);
        m
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{Encoder, TextEncoder};

    use super::*;

    /// The same family through the prometheus crate's encoder and through these builders gives
    /// the same bytes: labels, escaping, integral and fractional values, empty label sets.
    #[test]
    fn text_matches_the_prometheus_encoder() {
        let labels: &[&[(&str, &str)]] = &[
            &[],
            &[("gpu", "0"), ("uuid", "GPU-1")],
            &[("process", "py\\thon \"x\"\nnext")],
            &[("name", "NVIDIA RTX A6000"), ("empty", "")],
        ];
        let values = [0.0, 1.0, 2147483648.0, 0.35, 1e21, 123_456.789, -3.5, f64::NAN, f64::INFINITY, 1e-7];
        for (i, l) in labels.iter().enumerate() {
            for counter_kind in [false, true] {
                let help = "Help with a \\ backslash,\na newline and \"quotes\".";
                let ours = if counter_kind {
                    counter_family("x_total", help, values.iter().map(|v| counter(l, *v)).collect())
                } else {
                    family("x", help, values.iter().map(|v| sample(l, *v)).collect())
                };
                let theirs = if counter_kind {
                    proto::counter_family("x_total", help, values.iter().map(|v| proto::counter(l, *v)).collect())
                } else {
                    proto::family("x", help, values.iter().map(|v| proto::sample(l, *v)).collect())
                };
                let mut expected = Vec::new();
                TextEncoder::new().encode(&[theirs], &mut expected).unwrap();
                assert_eq!(ours.into_text().unwrap(), String::from_utf8(expected).unwrap(), "labels #{i}");
            }
        }
    }

    #[test]
    fn empty_families_are_left_out_and_the_rest_sorted() {
        let text = encode(vec![
            family("b", "B.", vec![sample(&[], 1.0)]),
            family("c", "C.", vec![]),
            family("a", "A.", vec![sample(&[], 2.0)]),
        ]);
        assert_eq!(text, "# HELP a A.\n# TYPE a gauge\na 2\n# HELP b B.\n# TYPE b gauge\nb 1\n");
    }
}
