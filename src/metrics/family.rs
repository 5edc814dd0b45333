//! Builders of metric families and samples, shared by every part of the exposition.

use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

/// One counter sample.
pub(super) fn counter(labels: &[(&str, &str)], value: f64) -> Metric {
    let mut c = Counter::default();
    c.set_value(value);
    let mut m = Metric::from_label(sample(labels, 0.0).take_label());
    m.set_counter(c);
    m
}

/// A counter family.
pub(super) fn counter_family(name: &str, help: &str, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = family(name, help, metrics);
    f.set_field_type(MetricType::COUNTER);
    f
}

pub(super) fn family(name: &str, help: &str, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_owned());
    f.set_help(help.to_owned());
    f.set_field_type(MetricType::GAUGE);
    f.set_metric(metrics);
    f
}

pub(super) fn sample(labels: &[(&str, &str)], value: f64) -> Metric {
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
