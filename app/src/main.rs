//! The `agentbox` binary: parses flags, loads the config, opens the store, starts serving
//! at once (ready once the models load), and shuts down gracefully on SIGINT/SIGTERM.

mod anthropic;
mod api;
mod clock;
mod config;
mod conversations;
mod error;
mod gateway;
mod gpu;
mod metrics;
mod models;
mod openai;
mod pricing;
mod sse;
mod state;
mod store;
mod traces;
mod ui_assets;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::serve::ListenerExt;
use clap::{Parser, Subcommand};

use crate::config::{Config, Overrides};

/// mimalloc: the gateway's many small per-request allocations cost less than in glibc's
/// allocator, and its tail latency is steadier under load (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use crate::models::ModelRegistry;
use crate::state::AppState;

#[derive(Parser)]
#[command(
    name = "agentbox",
    version,
    about = "One binary for serving, routing, tracing and agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API and web UI.
    Serve(Box<ServeArgs>),
    /// Read every GPU through NVML, as the monitor does, and print the samples as JSON.
    Gpu(GpuArgs),
}

#[derive(clap::Args)]
struct GpuArgs {
    /// How many samples to take
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// Milliseconds between samples
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Path of libnvidia-ml.so.1, where the loader cannot find it
    #[arg(long)]
    nvml_library: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080]
    #[arg(long, env = "AGENTBOX_LISTEN")]
    listen: Option<String>,
    /// Directory for the embedded stores [default: ./data]
    #[arg(long, env = "AGENTBOX_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// YAML config file
    #[arg(long, env = "AGENTBOX_CONFIG")]
    config: Option<PathBuf>,
    /// Where relative model paths are resolved [default: ./models]
    #[arg(long, env = "AGENTBOX_MODELS_DIR")]
    models_dir: Option<PathBuf>,
    /// CPU threads for inference (0 = one per core)
    #[arg(long, env = "AGENTBOX_THREADS")]
    threads: Option<usize>,
    /// Where chat models run: auto (a CUDA GPU if usable, else the CPU), cpu, cuda, cuda:N
    /// [default: auto]
    #[arg(long, env = "AGENTBOX_DEVICE")]
    device: Option<String>,
    /// Kubernetes pod name (the chart sets it from the downward API)
    #[arg(long, env = "AGENTBOX_POD_NAME", hide = true)]
    pod_name: Option<String>,
    #[arg(long, env = "AGENTBOX_POD_NAMESPACE", hide = true)]
    pod_namespace: Option<String>,
    #[arg(long, env = "AGENTBOX_CONTAINER_NAME", hide = true)]
    container_name: Option<String>,
    #[arg(long, env = "AGENTBOX_NODE_NAME", hide = true)]
    node_name: Option<String>,
    /// A LiteLLM proxy config.yaml: its model_list becomes routable models
    #[arg(long, env = "AGENTBOX_LITELLM_CONFIG")]
    litellm_config: Option<PathBuf>,
    /// The key /v1 calls must present (environment only, so it stays out of `ps`)
    #[arg(skip = std::env::var("AGENTBOX_MASTER_KEY").ok())]
    master_key: Option<String>,
    /// Postgres for the store (environment only: it may hold a password)
    #[arg(skip = std::env::var("AGENTBOX_DATABASE_URL").ok())]
    database_url: Option<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_http=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Gpu(args) => print_gpu_samples(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(Overrides {
        config_file: args.config,
        listen: args.listen,
        data_dir: args.data_dir,
        models_dir: args.models_dir,
        threads: args.threads,
        device: args.device,
        kubernetes: config::RawKubernetesConfig {
            pod_name: args.pod_name,
            namespace: args.pod_namespace,
            container: args.container_name,
            node_name: args.node_name,
        },
        litellm_config: args.litellm_config,
        master_key: args.master_key,
        database_url: args.database_url,
    })?;
    // SAFETY: still single-threaded here; the async runtime starts below.
    unsafe { engine::set_cpu_threads(config.threads) }.context("configuring CPU threads")?;
    let device = resolve_device(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(config, device))
}

/// Checks the configured device before anything starts: an explicit `cuda` without a usable
/// GPU stops start-up here; `auto` says which device it chose and why.
fn resolve_device(config: &Config) -> anyhow::Result<engine::ResolvedDevice> {
    let requested = config.engine.device;
    if !config
        .models
        .iter()
        .any(|m| m.task == config::ModelTask::Generate)
    {
        // A node that only routes, traces or monitors: the device is not used.
        return Ok(engine::ResolvedDevice {
            device: engine::Device::Cpu,
            gpu: None,
            fallback_reason: None,
        });
    }
    let resolved = requested
        .resolve()
        .with_context(|| format!("device {requested} (engine.device, --device, AGENTBOX_DEVICE) cannot be used; use --device cpu or auto"))?;
    match (&resolved.gpu, &resolved.fallback_reason) {
        (Some(gpu), _) => tracing::info!(
            "device: {} ({}, {} MiB, compute capability {}.{})",
            resolved.device,
            gpu.name,
            gpu.total_memory >> 20,
            gpu.compute_capability.0,
            gpu.compute_capability.1
        ),
        (None, Some(reason)) => {
            tracing::info!("device: cpu (auto found no usable GPU: {reason})")
        }
        (None, None) => tracing::info!("device: cpu"),
    }
    Ok(resolved)
}

fn print_gpu_samples(args: &GpuArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let recording = gpu::record(
        args.nvml_library.as_deref(),
        args.samples.max(1),
        Duration::from_millis(args.interval_ms),
    )?;
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, &recording).context("writing the samples")?;
    writeln!(stdout).context("writing the samples")?;
    Ok(())
}

async fn run(config: Config, device: engine::ResolvedDevice) -> anyhow::Result<()> {
    let store = store::Store::open(&config.data_dir, config.database_url.as_deref()).await?;
    tracing::info!("store: {}", store.describe());
    let gpu = tokio::task::spawn_blocking({
        let config = config.clone();
        let store = store.clone();
        move || gpu::GpuMonitor::start(&config, store)
    })
    .await
    .context("starting the GPU monitor")?;
    let metrics = Arc::new(metrics::Metrics::new()?);
    let prices = Arc::new(pricing::PriceTable::new(&config.pricing).context("pricing")?);
    let gateway = match &config.litellm {
        Some(litellm) => {
            let (gateway, unsupported) =
                gateway::Gateway::new(litellm, &prices, metrics.registry())?;
            for warning in litellm.warnings.iter().chain(&unsupported) {
                tracing::warn!("LiteLLM config: {warning}");
            }
            let names: Vec<&str> = gateway.model_names().collect();
            tracing::info!(models = ?names, "gateway: routing these models upstream");
            Some(Arc::new(gateway))
        }
        None => None,
    };
    if config.master_key.is_some() {
        tracing::info!("a master key guards /v1");
    }
    let keys = gateway::keys::KeyRegistry::new(store.load_keys().await?);
    let writer = store::Writer::start(&store, prices.clone(), metrics.registry())?;
    let ledger = gateway::Ledger::new(
        keys,
        prices,
        writer.clone(),
        config.master_key.as_deref(),
        metrics.registry(),
    )?;
    let state = AppState {
        models: Arc::new(OnceLock::new()),
        store: store.clone(),
        metrics,
        gpu: gpu.clone(),
        gateway,
        master_key: config.master_key.clone().map(Arc::from),
        ledger,
        tracing: Arc::new(traces::Tracing::new(
            config.traces.clone(),
            config.master_key.clone(),
        )),
    };
    if let Some(retention) = config.traces.retention {
        traces::retention::start(store.clone(), retention)?;
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let address = listener.local_addr().context("reading the bound address")?;
    tracing::info!("agentbox listening on http://{address}");

    let loader = {
        let state = state.clone();
        let config = config.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let started = Instant::now();
            let registry = ModelRegistry::load(&config, &device)?;
            for model in registry
                .listed
                .iter()
                .filter(|m| m.task == config::ModelTask::Generate)
            {
                state.metrics.register_model(&model.name);
            }
            let names: Vec<&str> = registry.listed.iter().map(|m| m.name.as_str()).collect();
            tracing::info!(
                models = ?names,
                threads = config.threads,
                "models loaded in {:.2}s; ready",
                started.elapsed().as_secs_f64()
            );
            let _ = state.models.set(Arc::new(registry));
            Ok(())
        })
    };

    // A model that fails to load stops the server with that error.
    let load_error = Arc::new(parking_lot::Mutex::new(None::<anyhow::Error>));
    let (load_failed, mut load_failed_rx) = tokio::sync::oneshot::channel::<()>();
    {
        let load_error = load_error.clone();
        tokio::spawn(async move {
            let error = match loader.await {
                Ok(Ok(())) => return,
                Ok(Err(error)) => error,
                Err(join) => anyhow::anyhow!("model loader panicked: {join}"),
            };
            *load_error.lock() = Some(error);
            let _ = load_failed.send(());
        });
    }

    let grace = Duration::from_secs(config.engine.shutdown_grace_secs);
    let shutdown_state = state.clone();
    // Small answers (a gateway relay, an SSE chunk) must leave at once, not wait on Nagle.
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {error}");
        }
    });
    axum::serve(listener, api::router(state))
        .with_graceful_shutdown(async move {
            tokio::select! {
                () = shutdown_signal() => {
                    tracing::info!("shutting down: finishing in-flight requests (up to {}s)", grace.as_secs());
                }
                Ok(()) = &mut load_failed_rx => return,
            }
            // Ending the generations closes their streams, which lets the server drain.
            if let Some(models) = shutdown_state.models.get().cloned() {
                let _ = tokio::task::spawn_blocking(move || models.shutdown(grace)).await;
            }
        })
        .await
        .context("serving HTTP")?;
    tokio::task::spawn_blocking(move || gpu.shutdown())
        .await
        .context("stopping the GPU monitor")?;
    let flushed = tokio::task::spawn_blocking(move || writer.flush(Duration::from_secs(10)))
        .await
        .unwrap_or(false);
    if !flushed {
        tracing::warn!("the store's writer could not be flushed before exit");
    }
    if let Some(error) = load_error.lock().take() {
        return Err(error);
    }
    store.close()?;
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
