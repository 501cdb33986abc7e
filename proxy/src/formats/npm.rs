//! npm format: not implemented yet.

use std::sync::Arc;

use crate::app::App;
use crate::error::ProxyError;
use crate::response::Reply;
use crate::upstream::Upstream;

use super::Request;

/// Answers one request below `/<upstream>/`.
pub async fn handle(
    _app: &Arc<App>,
    up: &Arc<Upstream>,
    _req: Request<'_>,
) -> Result<Reply, ProxyError> {
    Err(ProxyError::NotFound {
        code: "UNSUPPORTED",
        message: format!(
            "upstream {}: the npm format is not implemented in this build",
            up.name()
        ),
    })
}
