//! The flows loaded from the flows folder, by name, and the files rejected
//! with their errors. An invalid file never stops the host.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{FlowDefinition, FlowError};

/// The flows loaded from the flows folder, by name, and the files rejected.
#[derive(Default)]
pub struct FlowCatalog {
    flows: BTreeMap<String, Arc<FlowDefinition>>,
    errors: Vec<FlowError>,
}

impl FlowCatalog {
    /// Loads every `*.yaml` / `*.yml` in `dir`. Invalid files are reported in
    /// `errors` and left out; they never stop the host.
    pub fn load_dir(dir: &Path, plugin_exists: &dyn Fn(&str) -> bool) -> FlowCatalog {
        let mut catalog = FlowCatalog::default();
        let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect(),
            Err(e) => {
                catalog.errors.push(FlowError {
                    file: dir.to_owned(),
                    step: None,
                    message: format!("cannot read the flows folder: {e}"),
                });
                return catalog;
            }
        };
        paths.sort();
        for path in paths {
            catalog.load_file(&path, plugin_exists);
        }
        catalog
    }

    pub fn load_file(&mut self, path: &Path, plugin_exists: &dyn Fn(&str) -> bool) {
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
        match FlowDefinition::parse(path, &text, plugin_exists) {
            Ok(def) => {
                if let Some(other) = self.flows.get(&def.name) {
                    self.errors.push(FlowError {
                        file: path.to_owned(),
                        step: None,
                        message: format!(
                            "flow name `{}` is already used by {}",
                            def.name,
                            other.file.display()
                        ),
                    });
                } else {
                    self.flows.insert(def.name.clone(), Arc::new(def));
                }
            }
            Err(errors) => self.errors.extend(errors),
        }
    }

    /// Adds a definition parsed elsewhere (tests, flows built in code),
    /// replacing any of the same name; returns it as the catalog holds it.
    pub fn insert(&mut self, def: FlowDefinition) -> Arc<FlowDefinition> {
        let def = Arc::new(def);
        self.flows.insert(def.name.clone(), def.clone());
        def
    }

    pub fn get(&self, name: &str) -> Option<&Arc<FlowDefinition>> {
        self.flows.get(name)
    }

    pub fn flows(&self) -> impl Iterator<Item = &Arc<FlowDefinition>> {
        self.flows.values()
    }

    pub fn errors(&self) -> &[FlowError] {
        &self.errors
    }
}
