//! Reading samples out of sluice's `/-/metrics` text (Prometheus exposition format).

/// The value of the sample `series` (name with labels, as rendered); 0 when absent.
pub fn sample(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Sum of the samples whose line starts with `prefix` (all label sets of a name, and of
/// any name it is a prefix of); `None` when there is none.
pub fn sum_prefixed(page: &str, prefix: &str) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

/// Sum of the samples of `name` whose line holds every one of `labels` (`k="v"`); `None`
/// when there is none.
pub fn sum_labelled(page: &str, name: &str, labels: &[&str]) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}
