//! Tables, like kubectl's: rollouts and a rollout's rings.

use std::fmt::Write as _;
use std::sync::Arc;

use kube::ResourceExt;

use crate::api::PatchRollout;

pub(super) fn ts(t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> String {
    t.map(|t| t.0.strftime("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|| "-".into())
}

/// Left-aligned columns, like kubectl's tables.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}   ", w = widths[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.iter().map(|h| h.to_string()).collect(), &mut out);
    for r in rows {
        line(r.clone(), &mut out);
    }
    out
}

/// The rollouts table.
pub fn rollouts_table(rollouts: &[Arc<PatchRollout>]) -> String {
    let rows: Vec<Vec<String>> = rollouts
        .iter()
        .map(|r| {
            let s = r.status.clone().unwrap_or_default();
            let slo = s.slo.clone().unwrap_or_default();
            vec![
                r.name_any(),
                s.phase
                    .map(|p| format!("{p:?}"))
                    .unwrap_or_else(|| "-".into()),
                ts(Some(&r.spec.release_time)),
                s.current_ring.unwrap_or_else(|| "-".into()),
                format!("{}/{}", slo.on_manifest, slo.eligible),
                if slo.percent.is_empty() {
                    "-".into()
                } else {
                    slo.percent
                },
                match slo.projected_to_meet {
                    Some(true) => "on track".into(),
                    Some(false) => "AT RISK".into(),
                    None if r.spec.rollback || r.spec.abort => "withdrawn".into(),
                    None => "-".into(),
                },
                [
                    r.spec.paused.then_some("paused"),
                    r.spec.expedite.then_some("expedite"),
                    r.spec.rollback.then_some("rollback"),
                    r.spec.abort.then_some("abort"),
                    (r.spec.retry > 0).then_some("retried"),
                ]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(","),
            ]
        })
        .collect();
    table(
        &[
            "ROLLOUT",
            "PHASE",
            "RELEASE",
            "RING",
            "PATCHED",
            "SLO",
            "PROJECTION",
            "FLAGS",
        ],
        &rows,
    )
}

/// The rings table of one rollout.
pub fn rings_table(r: &PatchRollout) -> String {
    let s = r.status.clone().unwrap_or_default();
    let rows: Vec<Vec<String>> = s
        .rings
        .iter()
        .map(|g| {
            vec![
                g.name.clone(),
                g.phase
                    .map(|p| format!("{p:?}"))
                    .unwrap_or_else(|| "-".into()),
                ts(g.start_not_before.as_ref()),
                ts(g.started_time.as_ref()),
                ts(g.completed_time.as_ref()),
                format!(
                    "{}{}",
                    ts(g.deadline.as_ref()),
                    if g.deadline_missed { " (missed)" } else { "" }
                ),
                format!("{}/{}", g.succeeded, g.total),
                g.failed.to_string(),
                g.in_progress.to_string(),
                g.waves.len().to_string(),
            ]
        })
        .collect();
    let mut out = format!(
        "Rollout {} ({}):\n",
        r.name_any(),
        s.phase
            .map(|p| format!("{p:?}"))
            .unwrap_or_else(|| "-".into())
    );
    out.push_str(&table(
        &[
            "RING",
            "PHASE",
            "NOT BEFORE",
            "STARTED",
            "COMPLETED",
            "DEADLINE",
            "SUCCEEDED",
            "FAILED",
            "IN PROGRESS",
            "WAVES",
        ],
        &rows,
    ));
    for c in s.conditions.iter().filter(|c| c.status == "True") {
        let _ = writeln!(out, "{}: {} ({})", c.type_, c.message, c.reason);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["A", "BB"],
            &[
                vec!["long-value".into(), "x".into()],
                vec!["s".into(), "yy".into()],
            ],
        );
        assert_eq!(t, "A            BB\nlong-value   x\ns            yy\n");
    }
}
