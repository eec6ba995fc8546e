//! The wasmtime engine every plugin is compiled for and run on: its settings
//! (component model, epoch interruption, fuel, pooling allocator), the thread
//! that advances its epoch, and the linker of the `executor` world's imports.
//! The epoch ticks every `EPOCH_TICK` for as long as the engine lives.

use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi::p2::bindings::cli::environment;
use wasmtime_wasi::p2::bindings::filesystem::preopens;

use crate::bindings::{blobs_api, host_api, types_api};
use crate::blobs::HasBlobs;
use crate::meta::Limits;
use crate::sandbox::StepCtx;

/// How often the engine's epoch advances: the granularity of timeouts, and how
/// often a running plugin yields to the async runtime.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The engine (pooling allocator sized from `limits`, falling back to
/// on-demand allocation where the address space cannot be reserved), with its
/// epoch ticker started.
pub(crate) fn engine(limits: &Limits) -> wasmtime::Result<Engine> {
    let engine = match Engine::new(&engine_config(limits, true)) {
        Ok(engine) => engine,
        Err(e) => {
            tracing::warn!(error = %e, "pooling allocator unavailable, using on-demand allocation");
            Engine::new(&engine_config(limits, false))?
        }
    };
    let ticker = engine.weak();
    std::thread::Builder::new()
        .name("flowhost-epoch".into())
        .spawn(move || {
            while let Some(engine) = ticker.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })?;
    Ok(engine)
}

/// WASI p2, the gated `wasi:http`, and the `executor` world's own imports.
pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<StepCtx>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    // The sandbox's own preopens and environment replace wasmtime-wasi's,
    // so that reaching for either without a grant is recorded.
    linker.allow_shadowing(true);
    preopens::add_to_linker::<_, HasSelf<_>>(&mut linker, |ctx| ctx)?;
    environment::add_to_linker::<_, HasSelf<_>>(&mut linker, |ctx| ctx)?;
    linker.allow_shadowing(false);
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    types_api::add_to_linker::<_, HasSelf<_>>(&mut linker, |ctx| ctx)?;
    host_api::add_to_linker::<_, HasSelf<_>>(&mut linker, |ctx| ctx)?;
    blobs_api::add_to_linker::<_, HasBlobs>(&mut linker, StepCtx::blobs_view)?;
    Ok(linker)
}

fn engine_config(limits: &Limits, pooling: bool) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.consume_fuel(true);
    if pooling {
        let instances = limits.max_instances.max(1);
        let mut pool = PoolingAllocationConfig::default();
        // A Rust component built for wasip2 has a handful of core instances
        // (the program plus adapter shims), each possibly with a memory.
        pool.total_component_instances(instances)
            .total_core_instances(instances * 8)
            .total_memories(instances * 4)
            .total_tables(instances * 8)
            .total_stacks(instances)
            .max_memory_size(limits.defaults.max_memory_bytes);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}
