//! The link to tyr-server: sessions one after another until shutdown,
//! reconnecting with exponential backoff and full jitter after a failure,
//! and slowly (every [`REFUSED_RETRY`]) while the server refuses this
//! daemon's identity. A refused identity is replaced by enrolling again
//! only with a token that did not enroll it (see [`super::enroll`]), once
//! per process.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::backoff::{Backoff, REFUSED_RETRY};
use super::channel::{ServerAddress, stream_endpoint};
use super::enroll::{self, EnrollError};
use super::identity::StoredIdentity;
use super::session::{self, SessionContext, SessionEnd};
use crate::config::DaemonConfig;

/// Sleeps `delay` unless shutdown comes first; true when shut down.
async fn sleep_or_shutdown(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => false,
        () = shutdown.cancelled() => true,
    }
}

/// Runs sessions with `identity` until `shutdown`.
pub async fn run(
    config: &DaemonConfig,
    mut identity: StoredIdentity,
    ctx: &SessionContext,
    mut backoff: Backoff,
    shutdown: &CancellationToken,
) -> Result<(), EnrollError> {
    let server = ServerAddress::parse(config.server.as_deref().unwrap_or_default())?;
    let mut reenrolled = false;
    let mut first = true;
    while !shutdown.is_cancelled() {
        if !std::mem::take(&mut first) {
            ctx.link_stats.reconnects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let started = Instant::now();
        let end = match stream_endpoint(&server, &identity) {
            Ok(endpoint) => {
                let connected = tokio::select! {
                    connected = endpoint.connect() => connected,
                    () = shutdown.cancelled() => break,
                };
                match connected {
                    Ok(channel) => session::run(channel, ctx, shutdown).await,
                    Err(error) => SessionEnd::Failed(format!("connecting to {}: {error}", server.uri)),
                }
            }
            Err(error) => return Err(error.into()),
        };
        match end {
            SessionEnd::Shutdown => break,
            SessionEnd::Refused(status) => {
                error!(
                    daemon_id = %identity.daemon_id,
                    message = status.message(),
                    "this daemon's identity was revoked or is unknown to the server; re-enroll with `tyrd run --token ...`"
                );
                if !reenrolled && enroll::may_reenroll_after_refusal(config) {
                    reenrolled = true;
                    info!("enrolling again with the new token");
                    match enroll::enroll(config, &ctx.capabilities.kernel_version, &ctx.capabilities.arch).await {
                        Ok(new_identity) => {
                            identity = new_identity;
                            backoff.reset();
                            continue;
                        }
                        Err(error) => error!(%error, "re-enrollment failed"),
                    }
                }
                if sleep_or_shutdown(REFUSED_RETRY, shutdown).await {
                    break;
                }
            }
            SessionEnd::Failed(reason) => {
                backoff.session_ended(started.elapsed());
                let delay = backoff.next_delay();
                warn!(reason = %reason, delay_ms = delay.as_millis() as u64, "stream ended, reconnecting");
                if sleep_or_shutdown(delay, shutdown).await {
                    break;
                }
            }
        }
    }
    Ok(())
}
