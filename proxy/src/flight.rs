//! Single flight for small documents (manifests, tag lists): concurrent requests for the
//! same key share one upstream fetch and its result. Large bodies use [`crate::fill`],
//! which streams to every waiter instead of handing over a finished value.

use std::collections::HashMap;

use futures_util::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;

use crate::error::ProxyError;

type SharedFetch<T> = Shared<BoxFuture<'static, Result<T, ProxyError>>>;

/// Fetches in flight, by key.
pub struct Flights<T: Clone + Send + Sync + 'static> {
    map: Mutex<HashMap<String, SharedFetch<T>>>,
}

impl<T: Clone + Send + Sync + 'static> Default for Flights<T> {
    fn default() -> Self {
        Flights {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Clone + Send + Sync + 'static> Flights<T> {
    /// Runs `make()` unless a fetch for `key` is already running, and returns its result.
    pub async fn run(
        &self,
        key: &str,
        make: impl FnOnce() -> BoxFuture<'static, Result<T, ProxyError>>,
    ) -> Result<T, ProxyError> {
        let fut = {
            let mut map = self.map.lock();
            match map.get(key) {
                Some(f) => f.clone(),
                None => {
                    let f = make().shared();
                    map.insert(key.to_string(), f.clone());
                    f
                }
            }
        };
        let result = fut.clone().await;
        let mut map = self.map.lock();
        if map.get(key).is_some_and(|f| f.ptr_eq(&fut)) {
            map.remove(key);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn concurrent_runs_share_one_fetch() {
        let flights: Arc<Flights<u32>> = Arc::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (flights, calls) = (flights.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                flights
                    .run("k", move || {
                        async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            Ok(7)
                        }
                        .boxed()
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), 7);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(flights.map.lock().is_empty());
    }
}
