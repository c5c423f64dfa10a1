//! What came in over the last hour.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::html;

use super::{Viewer, page, unavailable};
use crate::gateway::{Gateway, charts};
use crate::store::activity;

/// What came in over the last hour: events per minute by source, and why requests were refused.
pub(in crate::gateway) async fn overview(State(gateway): State<Arc<Gateway>>, viewer: Viewer) -> Response {
    let now = chrono::Utc::now();
    let since = charts::first_minute(now);
    let catalog = gateway.catalog();
    let mut sources: Vec<(String, String)> = catalog
        .sources()
        .filter(|s| viewer.access.allows(&s.namespace))
        .map(|s| (s.namespace.clone(), s.name.clone()))
        .collect();
    sources.sort();
    let (received, refused) = match tokio::try_join!(
        activity::ingest_minutes(&gateway.pool, &sources, since),
        activity::rejections_since(&gateway.pool, viewer.access.namespaces(), since),
    ) {
        Ok(found) => found,
        Err(err) => return unavailable(err),
    };
    let body = html! {
        table.overview {
            caption { "Events received, last hour" }
            thead { tr { th scope="col" { "Source" } th scope="col" { "Per minute" } th scope="col" { "Events" } } }
            tbody {
                @for (namespace, name) in &sources {
                    @let series: Vec<(chrono::DateTime<chrono::Utc>, i64)> = received
                        .iter()
                        .filter(|(n, s, _, _)| n == namespace && s == name)
                        .map(|(_, _, minute, count)| (*minute, *count))
                        .collect();
                    tr {
                        td { (namespace) "/" (name) }
                        td { (charts::received(&series, now)) }
                        td { (series.iter().map(|(_, c)| c).sum::<i64>()) }
                    }
                }
            }
        }
        table.rejections {
            caption { "Refused requests, last hour" }
            thead { tr { th scope="col" { "Source" } th scope="col" { "Reason" } th scope="col" { "Requests" } } }
            tbody {
                @for (namespace, source, reason, count) in &refused {
                    tr { td { (namespace) "/" (source) } td { code { (reason) } } td { (count) } }
                }
                @if refused.is_empty() { tr { td colspan="3" { "None." } } }
            }
        }
    };
    page("Overview", body).into_response()
}
