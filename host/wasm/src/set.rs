//! The plugins a host has: a [`PluginSet`] (loaded plugins by name, files
//! skipped with their reasons, files still loading) that the host swaps whole
//! whenever one changes, and a generation number that wakes whoever follows
//! the changes (the flow catalog's re-validation). A step reads the set with
//! one lock-free load; a swap never blocks it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flowhost_core::flow::PluginAvailability;
use tokio::sync::watch;

use crate::PluginHost;
use crate::load::Skipped;
use crate::meta::Plugin;

/// One state of the plugins folder as loaded so far; immutable once made.
#[derive(Clone, Default)]
pub struct PluginSet {
    loaded: BTreeMap<String, Arc<Plugin>>,
    /// By path, so that listings keep the folder's order.
    skipped: BTreeMap<PathBuf, Skipped>,
    /// The names (file stems) of the files being loaded.
    loading: BTreeSet<String>,
}

impl PluginSet {
    pub fn get(&self, name: &str) -> Option<&Arc<Plugin>> {
        self.loaded.get(name)
    }

    pub fn plugins(&self) -> impl Iterator<Item = &Arc<Plugin>> {
        self.loaded.values()
    }

    pub fn skipped(&self) -> impl Iterator<Item = &Skipped> {
        self.skipped.values()
    }

    /// The files still loading, by the name flows would use.
    pub fn loading(&self) -> impl Iterator<Item = &str> {
        self.loading.iter().map(String::as_str)
    }

    /// No file is loading.
    pub fn is_settled(&self) -> bool {
        self.loading.is_empty()
    }

    pub fn availability(&self, name: &str) -> PluginAvailability {
        if self.loaded.contains_key(name) {
            PluginAvailability::Loaded
        } else if self.loading.contains(name) {
            PluginAvailability::Loading
        } else {
            PluginAvailability::Absent
        }
    }
}

/// The name a file in the plugins folder goes by while it loads.
pub(crate) fn file_key(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl PluginHost {
    /// The plugins as they are now; later changes do not alter it.
    pub fn snapshot(&self) -> Arc<PluginSet> {
        self.set.load_full()
    }

    /// Wakes on every change of the plugin set (a file starting or finishing
    /// loading). Hot reload swaps plugins through the same [`Self::update`].
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Applies `change` to a copy of the set, swaps it in whole and wakes the
    /// subscribers. Changes are rare (a file loaded), so copying is cheap.
    pub(crate) fn update(&self, change: impl Fn(&mut PluginSet)) {
        self.set.rcu(|set| {
            let mut next = PluginSet::clone(set);
            change(&mut next);
            next
        });
        self.changes.send_modify(|generation| *generation += 1);
    }

    pub(crate) fn mark_loading(&self, paths: &[PathBuf]) {
        self.update(|set| {
            for path in paths {
                set.loading.insert(file_key(path));
            }
        });
    }

    /// Records how loading `path` ended: a plugin available by its name, or
    /// the file skipped with its reason.
    pub(crate) fn finish_loading(&self, path: &Path, outcome: Result<Arc<Plugin>, Skipped>) {
        let key = file_key(path);
        self.update(|set| {
            set.loading.remove(&key);
            match &outcome {
                Ok(plugin) => {
                    set.skipped.remove(path);
                    set.loaded.insert(plugin.meta.name.clone(), plugin.clone());
                }
                Err(skipped) => {
                    set.skipped.insert(path.to_owned(), skipped.clone());
                }
            }
        });
    }
}
