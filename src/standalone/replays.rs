//! WebhookReplays in standalone's files: each is recorded for the replay worker once (a hash of
//! its spec tells an edited one from the one before), and removing the file forgets it, as
//! deleting the resource does in a cluster.

use kube::ResourceExt;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::api::WebhookReplay;
use crate::store::replays::{self, NewReplay};

/// What tells the replays of files from those of other origins.
const FILE_UID: &str = "file:";

fn uid(replay: &WebhookReplay) -> String {
    let spec = serde_json::to_vec(&replay.spec).unwrap_or_default();
    format!("{FILE_UID}{}", &hex::encode(Sha256::digest(spec))[..16])
}

/// Makes the recorded replays of files those of `replays`: new ones recorded, removed or edited
/// ones forgotten. A replay that cannot be recorded is logged and left out.
pub async fn sync(pool: &PgPool, replays: &[WebhookReplay]) {
    let mut keep = Vec::new();
    for replay in replays {
        let name = format!("{}/{}", replay.namespace().unwrap_or_default(), replay.name_any());
        match NewReplay::from_resource(replay, uid(replay)) {
            Ok(new) => match replays::upsert(pool, &new).await {
                Ok(_) => keep.push((new.namespace, new.name, new.uid)),
                Err(err) => tracing::warn!(replay = %name, "cannot record the replay: {err}"),
            },
            Err(problem) => tracing::warn!(replay = %name, "replay not started: {problem}"),
        }
    }
    match replays::remove_others(pool, FILE_UID, &keep).await {
        Ok(0) => {}
        Ok(removed) => tracing::info!(removed, "replays no longer in the configuration forgotten"),
        Err(err) => tracing::warn!("cannot forget removed replays: {err}"),
    }
}
