use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use super::Catalog;

/// The catalog in force, swapped whole on every configuration change: readers keep the one they
/// started with until they finish.
#[derive(Debug, Default)]
pub struct CatalogCell {
    current: RwLock<Arc<Catalog>>,
    /// False until the first configuration is in place (the gateway is not ready before).
    loaded: AtomicBool,
}

impl CatalogCell {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn set(&self, catalog: Catalog) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(catalog);
        self.loaded.store(true, Ordering::Release);
    }

    pub fn get(&self) -> Arc<Catalog> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }
}
