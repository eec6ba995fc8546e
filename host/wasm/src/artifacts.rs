//! The compiled-artifact cache: native code wasmtime compiled from a component,
//! in a folder the host creates for itself (mode 0700), named by the
//! component's blake3 hash and the engine's compatibility hash so that a changed
//! component or engine never meets a stale entry. Precompiled code is read only
//! from here, never from the plugins folder.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

pub struct ArtifactCache {
    dir: PathBuf,
    engine_hash: String,
}

impl ArtifactCache {
    pub fn new(dir: &Path, engine: &Engine) -> Self {
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        ArtifactCache {
            dir: dir.to_owned(),
            engine_hash: format!("{:016x}", hasher.finish()),
        }
    }

    fn path(&self, component_hash: &str) -> PathBuf {
        self.dir
            .join(format!("{component_hash}-{}.cwasm", self.engine_hash))
    }

    /// The cached component for `component_hash`, if there is a usable one.
    /// An entry wasmtime refuses is removed, and the component recompiled.
    pub fn load(&self, engine: &Engine, component_hash: &str) -> Option<Component> {
        let path = self.path(component_hash);
        if !path.is_file() {
            return None;
        }
        match deserialize(engine, &path) {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unusable compiled artifact removed");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores `component`; a failure is logged and costs only the next start
    /// a compilation.
    pub fn store(&self, component_hash: &str, component: &Component) {
        let write = || -> std::io::Result<()> {
            create_private_dir(&self.dir)?;
            let bytes = component
                .serialize()
                .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
            let path = self.path(component_hash);
            // Written aside, then renamed: a reader never sees half a file.
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &path)?;
            Ok(())
        };
        if let Err(e) = write() {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot store a compiled artifact");
        }
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Loads native code that this host compiled and wrote itself.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: wasmtime requires that the file be an artifact it produced and
    // that nobody else can change. Entries are written only by `store` above,
    // into a folder the host created with mode 0700, and named by the engine's
    // compatibility hash; wasmtime checks the version and settings again.
    unsafe { Component::deserialize_file(engine, path) }
}
