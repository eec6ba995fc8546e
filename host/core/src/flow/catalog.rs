//! The flows the host serves: a [`FlowSet`] (one reading of the flows folder:
//! flows by name, flows waiting for a plugin still loading, files rejected
//! with their errors) held by a [`FlowCatalog`], which swaps it whole. A
//! reader gets one consistent set, never a half-updated one; an invalid file
//! never stops the host.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;

use super::{FlowDefinition, FlowError};

/// What the host knows of a plugin a flow names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PluginAvailability {
    Loaded,
    /// Its file is still being loaded: the flow waits for it.
    Loading,
    /// No such plugin: none in the folder, or its file was skipped.
    Absent,
}

/// A valid flow that is not served yet: some plugin it uses is still loading.
#[derive(Clone, Debug, Serialize)]
pub struct WaitingFlow {
    pub name: String,
    pub file: PathBuf,
    /// The plugins it waits for.
    pub plugins: Vec<String>,
}

/// One reading of the flows folder, immutable once made.
#[derive(Default)]
pub struct FlowSet {
    flows: BTreeMap<String, Arc<FlowDefinition>>,
    waiting: Vec<WaitingFlow>,
    errors: Vec<FlowError>,
}

impl FlowSet {
    /// Reads every `*.yaml` / `*.yml` in `dir`. Invalid files are reported in
    /// `errors`, flows whose plugins are still loading in `waiting`.
    pub fn load_dir(dir: &Path, plugins: &dyn Fn(&str) -> PluginAvailability) -> FlowSet {
        let mut set = FlowSet::default();
        let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect(),
            Err(e) => {
                set.errors.push(FlowError {
                    file: dir.to_owned(),
                    step: None,
                    message: format!("cannot read the flows folder: {e}"),
                });
                return set;
            }
        };
        paths.sort();
        for path in paths {
            set.load_file(&path, plugins);
        }
        set
    }

    fn load_file(&mut self, path: &Path, plugins: &dyn Fn(&str) -> PluginAvailability) {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                self.errors.push(FlowError {
                    file: path.to_owned(),
                    step: None,
                    message: format!("cannot read file: {e}"),
                });
                return;
            }
        };
        // A plugin still loading counts as known here; the flow then waits.
        let known = |name: &str| plugins(name) != PluginAvailability::Absent;
        let def = match FlowDefinition::parse(path, &text, &known) {
            Ok(def) => def,
            Err(errors) => return self.errors.extend(errors),
        };
        let taken = self
            .flows
            .get(&def.name)
            .map(|f| f.file.clone())
            .or_else(|| {
                let w = self.waiting.iter().find(|w| w.name == def.name);
                w.map(|w| w.file.clone())
            });
        if let Some(other) = taken {
            return self.errors.push(FlowError {
                file: path.to_owned(),
                step: None,
                message: format!(
                    "flow name `{}` is already used by {}",
                    def.name,
                    other.display()
                ),
            });
        }
        let mut loading: Vec<String> = def
            .steps
            .iter()
            .filter(|s| plugins(&s.plugin) == PluginAvailability::Loading)
            .map(|s| s.plugin.clone())
            .collect();
        loading.sort();
        loading.dedup();
        if loading.is_empty() {
            self.flows.insert(def.name.clone(), Arc::new(def));
        } else {
            self.waiting.push(WaitingFlow {
                name: def.name,
                file: path.to_owned(),
                plugins: loading,
            });
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<FlowDefinition>> {
        self.flows.get(name)
    }

    pub fn flows(&self) -> impl Iterator<Item = &Arc<FlowDefinition>> {
        self.flows.values()
    }

    /// Valid flows not served yet, each with the plugins it waits for.
    pub fn waiting(&self) -> &[WaitingFlow] {
        &self.waiting
    }

    pub fn is_waiting(&self, name: &str) -> bool {
        self.waiting.iter().any(|w| w.name == name)
    }

    pub fn errors(&self) -> &[FlowError] {
        &self.errors
    }
}

/// The flows served now, shared by the runner and the API. Readers take the
/// current [`FlowSet`] (a lock-free load); a reload swaps in a new one whole,
/// so a flow changes for the requests that start after the swap only.
#[derive(Default)]
pub struct FlowCatalog {
    current: ArcSwap<FlowSet>,
}

impl FlowCatalog {
    /// Reads the flows folder once; see [`FlowSet::load_dir`].
    pub fn load_dir(dir: &Path, plugins: &dyn Fn(&str) -> PluginAvailability) -> FlowCatalog {
        FlowCatalog {
            current: ArcSwap::from_pointee(FlowSet::load_dir(dir, plugins)),
        }
    }

    /// Reads the flows folder again and swaps the result in.
    pub fn reload(&self, dir: &Path, plugins: &dyn Fn(&str) -> PluginAvailability) {
        self.current
            .store(Arc::new(FlowSet::load_dir(dir, plugins)));
    }

    /// Adds a definition parsed elsewhere (tests, flows built in code),
    /// replacing any of the same name; returns it as the catalog holds it.
    pub fn insert(&mut self, def: FlowDefinition) -> Arc<FlowDefinition> {
        let def = Arc::new(def);
        self.current.rcu(|set| FlowSet {
            flows: {
                let mut flows = set.flows.clone();
                flows.insert(def.name.clone(), def.clone());
                flows
            },
            waiting: set.waiting.clone(),
            errors: set.errors.clone(),
        });
        def
    }

    /// The flows as they are now; later swaps do not change it.
    pub fn snapshot(&self) -> Arc<FlowSet> {
        self.current.load_full()
    }

    pub fn get(&self, name: &str) -> Option<Arc<FlowDefinition>> {
        self.current.load().get(name).cloned()
    }

    /// The flows served now.
    pub fn flows(&self) -> std::vec::IntoIter<Arc<FlowDefinition>> {
        let set = self.current.load();
        set.flows().cloned().collect::<Vec<_>>().into_iter()
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::{FlowCatalog, PluginAvailability};

    /// A folder of flow files under the system's temp folder, removed on drop.
    struct Folder(PathBuf);

    impl Folder {
        fn new(files: &[(&str, &str)]) -> Folder {
            let dir = std::env::temp_dir().join(format!(
                "flowhost-catalog-{}-{}",
                std::process::id(),
                fastrand::u64(..)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            for (name, text) in files {
                std::fs::write(dir.join(format!("{name}.yaml")), text).unwrap();
            }
            Folder(dir)
        }
    }

    impl Drop for Folder {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn one_step(name: &str, plugin: &str) -> String {
        format!("name: {name}\nsteps:\n  - name: s\n    plugin: {plugin}\n")
    }

    #[test]
    fn a_flow_waits_for_a_plugin_still_loading_and_is_served_once_it_is_loaded() {
        let (ready, slow, gone) = (
            one_step("ready", "fast"),
            one_step("slow", "late"),
            one_step("gone", "missing"),
        );
        let folder = Folder::new(&[("ready", &ready), ("slow", &slow), ("gone", &gone)]);
        let loading = |name: &str| match name {
            "fast" => PluginAvailability::Loaded,
            "late" => PluginAvailability::Loading,
            _ => PluginAvailability::Absent,
        };
        let catalog = FlowCatalog::load_dir(&folder.0, &loading);
        let before = catalog.snapshot();
        assert!(catalog.get("ready").is_some());
        assert!(catalog.get("slow").is_none());
        assert!(before.is_waiting("slow"));
        assert_eq!(before.waiting()[0].plugins, ["late"]);
        assert_eq!(
            before.errors().len(),
            1,
            "a plugin that is absent is an error"
        );
        assert!(before.errors()[0].message.contains("missing"));

        let loaded = |name: &str| match name {
            "fast" | "late" => PluginAvailability::Loaded,
            _ => PluginAvailability::Absent,
        };
        catalog.reload(&folder.0, &loaded);
        assert!(catalog.get("slow").is_some());
        assert!(catalog.snapshot().waiting().is_empty());
        assert!(
            before.get("slow").is_none(),
            "a snapshot taken earlier is unchanged"
        );
    }

    #[test]
    fn a_name_taken_by_a_waiting_flow_is_not_taken_twice() {
        let (a, b) = (one_step("same", "late"), one_step("same", "fast"));
        let folder = Folder::new(&[("a", &a), ("b", &b)]);
        let catalog = FlowCatalog::load_dir(&folder.0, &|name| match name {
            "late" => PluginAvailability::Loading,
            _ => PluginAvailability::Loaded,
        });
        let set = catalog.snapshot();
        assert!(set.is_waiting("same"));
        assert!(catalog.get("same").is_none());
        assert!(
            set.errors()[0].message.contains("already used"),
            "{:?}",
            set.errors()
        );
    }
}
