//! The console's pictures, as inline SVG rendered on the server (no scripts, no CDN): per-minute
//! bars, a latency line and a circuit strip over the last hour, and a delivery's attempts on a
//! timeline. Pure functions of the numbers; each picture has a text alternative.

use chrono::{DateTime, Duration, DurationRound, Utc};
use maud::{Markup, html};

use crate::store::activity::Minute;
use crate::store::history::AttemptDetail;

/// Minutes a chart covers.
pub const MINUTES: i64 = 60;
const SLOT: i64 = 3;
const WIDTH: i64 = MINUTES * SLOT;
const HEIGHT: i64 = 28;

const GREEN: &str = "#1a7f37";
const RED: &str = "#cf222e";
const AMBER: &str = "#bf8700";
const GREY: &str = "#d0d7de";

/// The first minute of the chart that ends with the minute of `now`.
pub fn first_minute(now: DateTime<Utc>) -> DateTime<Utc> {
    now.duration_trunc(Duration::minutes(1)).unwrap_or(now) - Duration::minutes(MINUTES - 1)
}

/// Where a minute falls on the chart, if it does.
fn slot(start: DateTime<Utc>, minute: DateTime<Utc>) -> Option<i64> {
    let index = (minute - start).num_minutes();
    (0..MINUTES).contains(&index).then_some(index)
}

/// Deliveries per minute, succeeded below and failed stacked above.
pub fn deliveries(minutes: &[(DateTime<Utc>, Minute)], now: DateTime<Utc>) -> Markup {
    let points: Vec<_> = minutes
        .iter()
        .map(|(minute, m)| (*minute, i64::from(m.succeeded), i64::from(m.failed)))
        .collect();
    let (succeeded, failed) = hour_totals(&points, now);
    let label = format!("Deliveries per minute, last hour: {succeeded} succeeded, {failed} failed");
    stacked(&points, now, &label, "deliveries")
}

/// Events received per minute.
pub fn received(minutes: &[(DateTime<Utc>, i64)], now: DateTime<Utc>) -> Markup {
    let points: Vec<_> = minutes
        .iter()
        .map(|(minute, count)| (*minute, *count, 0))
        .collect();
    let (received, _) = hour_totals(&points, now);
    stacked(
        &points,
        now,
        &format!("Events received per minute, last hour: {received}"),
        "received",
    )
}

fn hour_totals(points: &[(DateTime<Utc>, i64, i64)], now: DateTime<Utc>) -> (i64, i64) {
    let start = first_minute(now);
    points
        .iter()
        .filter(|(minute, _, _)| slot(start, *minute).is_some())
        .fold((0, 0), |(a, b), (_, lower, upper)| (a + lower, b + upper))
}

/// Bars per minute: `lower` in green, `upper` in red stacked on it, scaled to the busiest minute.
fn stacked(points: &[(DateTime<Utc>, i64, i64)], now: DateTime<Utc>, label: &str, class: &str) -> Markup {
    let start = first_minute(now);
    let shown: Vec<(i64, i64, i64)> = points
        .iter()
        .filter_map(|(minute, lower, upper)| Some((slot(start, *minute)?, *lower, *upper)))
        .collect();
    let most = shown.iter().map(|(_, a, b)| a + b).max().unwrap_or(0).max(1);
    let height = |count: i64| (count * HEIGHT).div_euclid(most).max(i64::from(count > 0));
    html! {
        svg class={ "chart " (class) } width=(WIDTH) height=(HEIGHT) viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img" aria-label=(label) {
            title { (label) }
            rect x="0" y=(HEIGHT - 1) width=(WIDTH) height="1" fill=(GREY) {}
            @for (index, lower, upper) in &shown {
                @let ok = height(*lower);
                @let bad = height(*upper);
                @if ok > 0 { rect.succeeded x=(index * SLOT) y=(HEIGHT - ok) width=(SLOT - 1) height=(ok) fill=(GREEN) {} }
                @if bad > 0 { rect.failed x=(index * SLOT) y=(HEIGHT - ok - bad) width=(SLOT - 1) height=(bad) fill=(RED) {} }
            }
        }
    }
}

/// The p95 latency per minute, on a log scale from 1 ms to 30 s.
pub fn latency(minutes: &[(DateTime<Utc>, Minute)], now: DateTime<Utc>) -> Markup {
    let start = first_minute(now);
    let y = |ms: i32| {
        let fraction = (f64::from(ms.clamp(1, 30_000))).log10() / 30_000f64.log10();
        ((1.0 - fraction) * (HEIGHT - 2) as f64).round() as i64 + 1
    };
    let points: Vec<(i64, i32)> = minutes
        .iter()
        .filter_map(|(minute, counts)| Some((slot(start, *minute)?, counts.p95_ms()?)))
        .collect();
    let path = points
        .iter()
        .map(|(index, ms)| format!("{},{}", index * SLOT + 1, y(*ms)))
        .collect::<Vec<_>>()
        .join(" ");
    let label = match points.last() {
        Some((_, ms)) if *ms == i32::MAX => "p95 latency per minute, last hour: latest over 30 s".to_owned(),
        Some((_, ms)) => format!("p95 latency per minute, last hour: latest at most {ms} ms"),
        None => "p95 latency per minute, last hour: no attempts".to_owned(),
    };
    html! {
        svg.chart.latency width=(WIDTH) height=(HEIGHT) viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img" aria-label=(label) {
            title { (label) }
            @if points.len() == 1 {
                circle cx=(points[0].0 * SLOT + 1) cy=(y(points[0].1)) r="1.5" fill=(AMBER) {}
            } @else if !points.is_empty() {
                polyline points=(path) fill="none" stroke=(AMBER) stroke-width="1.5" {}
            }
        }
    }
}

/// The circuit's state through the hour: `history` is the state before the hour (if known) and
/// each change since, oldest first.
pub fn circuit(history: &[(DateTime<Utc>, String)], now: DateTime<Utc>) -> Markup {
    let start = first_minute(now);
    let state_at = |at: DateTime<Utc>| {
        history
            .iter()
            .rev()
            .find(|(changed, _)| *changed <= at)
            .map_or("closed", |(_, state)| state.as_str())
    };
    let cells: Vec<(i64, &str)> = (0..MINUTES)
        .map(|index| {
            let end = start + Duration::minutes(index + 1) - Duration::milliseconds(1);
            // A minute in which it opened shows as open.
            let opened = history
                .iter()
                .any(|(at, state)| state == "open" && slot(start, *at) == Some(index));
            (index, if opened { "open" } else { state_at(end.min(now)) })
        })
        .collect();
    let opened = history
        .iter()
        .filter(|(at, state)| state == "open" && *at >= start)
        .count();
    let label = format!(
        "Circuit over the last hour: {} now, opened {opened} time{}",
        state_at(now),
        if opened == 1 { "" } else { "s" }
    );
    html! {
        svg.chart.circuit width=(WIDTH) height="8" viewBox={ "0 0 " (WIDTH) " 8" } role="img" aria-label=(label) {
            title { (label) }
            @for (index, state) in &cells {
                rect class=(state) x=(index * SLOT) y="0" width=(SLOT) height="8" fill=(match *state { "open" => RED, "half-open" => AMBER, _ => GREY }) {}
            }
        }
    }
}

/// A delivery's attempts from the event's arrival: when each started, how long it took, how it
/// ended, and when the next one is due.
pub fn timeline(
    received_at: DateTime<Utc>,
    attempts: &[&AttemptDetail],
    next_attempt_at: Option<DateTime<Utc>>,
) -> Markup {
    const WIDE: f64 = 600.0;
    let ends = attempts
        .iter()
        .map(|a| a.started_at + Duration::milliseconds(i64::from(a.duration_ms)))
        .chain(next_attempt_at)
        .max()
        .unwrap_or(received_at);
    let span = ((ends - received_at).num_milliseconds().max(1) as f64) * 1.05;
    // Room on the right for the last label.
    let x = |at: DateTime<Utc>| {
        ((at - received_at).num_milliseconds().max(0) as f64 / span * (WIDE - 80.0)).round()
    };
    let offset = |at: DateTime<Utc>| {
        let ms = (at - received_at).num_milliseconds();
        if ms < 10_000 {
            format!("+{ms} ms")
        } else {
            format!("+{:.1} s", ms as f64 / 1000.0)
        }
    };
    let label = format!(
        "{} attempt{}{}",
        attempts.len(),
        if attempts.len() == 1 { "" } else { "s" },
        next_attempt_at.map_or(String::new(), |at| format!(", next {}", offset(at)))
    );
    html! {
        svg.timeline width=(WIDE + 20.0) height="44" viewBox={ "0 0 " (WIDE + 20.0) " 44" } role="img" aria-label=(label) {
            title { (label) }
            rect x="0" y="21" width=(WIDE) height="1" fill=(GREY) {}
            circle cx="1" cy="21" r="3" fill="#57606a" { title { "received " (received_at.format("%H:%M:%S%.3f")) } }
            @for attempt in attempts {
                @let ok = attempt.status_code.is_some_and(|c| (200..300).contains(&c));
                @let start = x(attempt.started_at);
                @let end = x(attempt.started_at + Duration::milliseconds(i64::from(attempt.duration_ms)));
                @let outcome = match attempt.status_code { Some(code) => code.to_string(), None => attempt.error_class.clone().unwrap_or_else(|| "error".into()) };
                g class={ "attempt " (if ok { "succeeded" } else { "failed" }) } {
                    rect x=(start) y="14" width=((end - start).max(3.0)) height="14" fill=(if ok { GREEN } else { RED }) {
                        title { "#" (attempt.attempt_number) " " (outcome) " after " (attempt.duration_ms) " ms, at " (offset(attempt.started_at)) }
                    }
                    text x=(start) y="10" font-size="10" { "#" (attempt.attempt_number) " " (outcome) }
                    text x=(start) y="40" font-size="10" { (offset(attempt.started_at)) }
                }
            }
            @if let Some(next) = next_attempt_at {
                line.next x1=(x(next)) y1="8" x2=(x(next)) y2="34" stroke=(AMBER) stroke-dasharray="3 2" {}
                text x=(x(next) + 3.0) y="40" font-size="10" { "next " (offset(next)) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minute(succeeded: i32, failed: i32, ms_bucket: usize) -> Minute {
        let mut latency_buckets = vec![0; 13];
        latency_buckets[ms_bucket] = succeeded + failed;
        Minute {
            succeeded,
            failed,
            latency_buckets,
            ..Minute::default()
        }
    }

    #[test]
    fn bars_stack_failures_on_successes_within_the_hour() {
        let now: DateTime<Utc> = "2026-12-01T10:30:20Z".parse().unwrap();
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let minutes = [
            (at("2026-12-01T09:00:00Z"), minute(100, 0, 2)), // before the hour: not drawn
            (at("2026-12-01T10:29:00Z"), minute(6, 2, 2)),
            (at("2026-12-01T10:30:00Z"), minute(4, 0, 5)),
        ];
        let svg = deliveries(&minutes, now).into_string();
        assert!(svg.contains("last hour: 10 succeeded, 2 failed"), "{svg}");
        assert_eq!(svg.matches("class=\"succeeded\"").count(), 2);
        assert_eq!(svg.matches("class=\"failed\"").count(), 1);
        // The busiest minute (8) fills the height: 6 succeeded are 21 px, 2 failed 7 px.
        assert!(
            svg.contains("x=\"174\" y=\"7\" width=\"2\" height=\"21\""),
            "{svg}"
        );
        assert!(
            svg.contains("x=\"174\" y=\"0\" width=\"2\" height=\"7\""),
            "{svg}"
        );
        assert!(
            latency(&minutes, now)
                .into_string()
                .contains("latest at most 250 ms")
        );
    }

    #[test]
    fn the_circuit_strip_shows_when_it_was_open() {
        let now: DateTime<Utc> = "2026-12-01T10:59:30Z".parse().unwrap();
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let history = [
            (at("2026-12-01T08:00:00Z"), "closed".to_owned()),
            (at("2026-12-01T10:10:05Z"), "open".to_owned()),
            (at("2026-12-01T10:12:00Z"), "half-open".to_owned()),
            (at("2026-12-01T10:12:01Z"), "closed".to_owned()),
        ];
        let svg = circuit(&history, now).into_string();
        assert!(svg.contains("closed now, opened 1 time"), "{svg}");
        // 10:10 and 10:11 are open (minutes 10 and 11 of the hour from 10:00), 10:12 closed.
        assert_eq!(svg.matches("class=\"open\"").count(), 2, "{svg}");
        assert!(
            circuit(&[], now)
                .into_string()
                .contains("closed now, opened 0 times")
        );
    }

    #[test]
    fn the_timeline_places_attempts_and_the_next_retry() {
        let received: DateTime<Utc> = "2026-12-01T10:00:00Z".parse().unwrap();
        let attempt = |n: i32, after_ms: i64, status: Option<i16>| AttemptDetail {
            delivery_id: uuid::Uuid::nil(),
            attempt_number: n,
            started_at: received + Duration::milliseconds(after_ms),
            duration_ms: 120,
            status_code: status,
            error_class: status.is_none().then(|| "timeout".to_owned()),
            error: None,
            response_headers: None,
            response_body: None,
        };
        let (first, second) = (attempt(1, 50, Some(503)), attempt(2, 5_050, None));
        let svg = timeline(
            received,
            &[&first, &second],
            Some(received + Duration::seconds(35)),
        )
        .into_string();
        assert!(svg.contains("2 attempts, next +35.0 s"), "{svg}");
        assert!(svg.contains("#1 503") && svg.contains("#2 timeout"), "{svg}");
        assert!(svg.contains("class=\"next\""));
    }
}
